"""Which checkpoint weights transfer to a model of another catalogue, decided in one place.

Transferable: everything the model and the checkpoint share by name and shape, except
item-specific parameters (a model class lists name fragments in ``ITEM_SPECIFIC_PARAMETERS``:
per-item bias tables, per-item fusion weights). Item feature tables are non-persistent buffers
and never appear in a state dict at all. The paper's reference code loaded non-strictly and lost
weights silently; here every key is accounted for in a :class:`TransferReport`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


class TransferError(ValueError):
    """A checkpoint that cannot be transferred: shape mismatches, or nothing in common."""


@dataclass
class TransferReport:
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # checkpoint key -> reason
    kept_initial: list[str] = field(default_factory=list)  # model keys not loaded

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors:"]
        lines += [f"  loaded {key}" for key in self.loaded]
        lines += [f"  skipped {key}: {reason}" for key, reason in sorted(self.skipped.items())]
        lines += [f"  kept the model's initial {key}" for key in self.kept_initial]
        return "\n".join(lines)


def is_item_specific(model: nn.Module, key: str) -> bool:
    """True if state-dict ``key`` belongs to one item catalogue (never transferred)."""
    fragments = getattr(model, "ITEM_SPECIFIC_PARAMETERS", ())
    return any(fragment in key.split(".") for fragment in fragments)


def load_transferable(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> TransferReport:
    """Load the transferable part of ``state_dict`` into ``model`` and say what happened to each key.

    Raises:
        TransferError: a transferable key whose shape differs (e.g. another hidden size), or
            no key in common at all (a checkpoint of another model).
    """
    own = model.state_dict()
    report = TransferReport()
    mismatched = []
    selected = {}
    for key, tensor in state_dict.items():
        if is_item_specific(model, key):
            report.skipped[key] = "item-specific (belongs to the checkpoint's catalogue)"
        elif key not in own:
            report.skipped[key] = f"not a parameter of {type(model).__name__}"
        elif own[key].shape != tensor.shape:
            mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)}, model {tuple(own[key].shape)}")
        else:
            selected[key] = tensor
    if mismatched:
        raise TransferError(
            "checkpoint shapes differ from the model's (check hidden_size, inner_size, expand, "
            "head_dim, d_state, n_groups, conv_width, MAX_ITEM_LIST_LENGTH (the time path's taps) "
            "and the modality feature sizes):\n  " + "\n  ".join(mismatched)
        )
    if not selected:
        raise TransferError(
            f"no transferable tensor in common with {type(model).__name__}: is this a checkpoint "
            f"of another model? Its keys start with {sorted({k.split('.')[0] for k in state_dict})}"
        )
    model.load_state_dict(selected, strict=False)
    report.loaded = sorted(selected)
    report.kept_initial = sorted(key for key in own if key not in selected)
    return report


def freeze_parameters(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Stop training every parameter named ``prefix`` or ``prefix.*``; returns their names.

    Raises:
        ValueError: a prefix that names no parameter (a typo would otherwise freeze nothing).
    """
    frozen = []
    for prefix in prefixes:
        matched = [
            name for name, parameter in model.named_parameters()
            if name == prefix or name.startswith(prefix + ".")
        ]
        if not matched:
            top_level = sorted({name.split(".")[0] for name, _ in model.named_parameters()})
            raise ValueError(
                f"freeze: {prefix!r} names no parameter of {type(model).__name__}; use a parameter "
                f"name or a module prefix, e.g. one of {top_level}"
            )
        for name in matched:
            model.get_parameter(name).requires_grad_(False)
        frozen += matched
    return frozen
