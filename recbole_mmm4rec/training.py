"""Two training options RecBole 1.2.1's trainer lacks, for every model (RecBole's and plugins).

* ``accumulation_steps: N`` steps the optimiser once per N batches, on their summed gradients:
  the MMM4Rec paper steps NAdam every 8 micro-batches of 1,024. For a mean-reduced loss the
  update equals one step on the N batches concatenated, whatever their sizes: each batch's loss
  is back-propagated times its number of rows, and before the step the summed gradients are
  divided by the group's rows, then clipped (``clip_grad_norm``). An epoch's last group is
  stepped even when it has fewer than N batches. ``accumulation_steps: 1`` is RecBole's own loop.
* ``weight_decay_exempt: True`` (with ``weight_decay`` > 0) gives every ``learner`` two parameter
  groups: weight decay for matrices and tables, none for the parameters decay should not pull to
  zero (:func:`exempt_from_weight_decay`), as Mamba-2 and most transformer recipes train.

:func:`recbole_mmm4rec.compat.compatible_trainer` adds both to every trainer class it hands out.
"""
from __future__ import annotations

from logging import getLogger
from typing import Iterable

import torch
from recbole.trainer import Trainer
from recbole.utils import get_gpu_usage, set_color
from torch.nn.utils.clip_grad import clip_grad_norm_
from tqdm import tqdm

from recbole_mmm4rec.data.sequence import next_items_field

# Mamba-2's parameters without weight decay (mamba-ssm marks them ``_no_weight_decay``): the
# state decay rates, the step-size biases and the skip gains, whatever their shape.
_EXEMPT_LEAF_NAMES = frozenset({"A_log", "dt_bias", "D"})


def accumulation_steps(config) -> int:
    """The config's ``accumulation_steps``; 1 when absent (a config saved before the key existed)."""
    value = config["accumulation_steps"]
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"accumulation_steps must be a positive integer (batches per optimiser step), found {value!r}")
    return value


class AccumulatingTrainer(Trainer):
    """RecBole's ``Trainer`` stepping the optimiser every ``accumulation_steps`` batches.

    :func:`recbole_mmm4rec.compat.compatible_trainer` puts this class directly above RecBole's
    ``Trainer`` in a trainer's MRO, so that the trainers whose ``_train_epoch`` runs RecBole's
    loop once per phase through ``super()`` (KGTrainer, KGATTrainer, MKRTrainer, RecVAETrainer)
    accumulate within each phase too. A trainer with a batch loop of its own (NCLTrainer) would
    step every batch: it is refused at its first batch.

    The loop is RecBole's ``Trainer._train_epoch`` (same loss sums, NaN check, progress bar,
    mixed precision and distributed hooks) with the step moved to the end of each group; RecBole's
    loop is one function, so it cannot be reused piecewise.
    """

    def __init__(self, config, model):
        self.accumulation_steps = accumulation_steps(config)
        self._next_items = next_items_field(config)
        self._in_accumulating_loop = False
        super().__init__(config, model)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self.accumulation_steps == 1:
            return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        iter_data = (
            tqdm(train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink"))
            if show_progress
            else train_data
        )
        if not self.config["single_spec"] and train_data.shuffle:
            train_data.sampler.set_epoch(epoch_idx)
        scaler = torch.amp.GradScaler("cuda", enabled=self.enable_scaler)
        total_loss, group_rows = None, 0
        self.optimizer.zero_grad()
        self._in_accumulating_loop = True
        try:
            for batch_idx, interaction in enumerate(iter_data):
                interaction = interaction.to(self.device)
                sync_loss = 0
                if not self.config["single_spec"]:
                    self.set_reduce_hook()
                    sync_loss = self.sync_grad_loss()
                with torch.autocast(device_type=self.device.type, enabled=self.enable_amp):
                    losses = loss_func(interaction)
                loss = sum(losses) if isinstance(losses, tuple) else losses
                total_loss = _add_batch_loss(total_loss, losses)
                self._check_nan(loss)
                # The terms the batch's mean loss averages: rows, or a sequence batch's targets.
                rows = int((interaction[self._next_items] > 0).sum()) if self._next_items in interaction else len(interaction)
                scaler.scale(loss * rows + sync_loss).backward()
                group_rows += rows
                if (batch_idx + 1) % self.accumulation_steps == 0:
                    self._step_group(scaler, group_rows)
                    group_rows = 0
                if self.gpu_available and show_progress:
                    iter_data.set_postfix_str(set_color("GPU RAM: " + get_gpu_usage(self.device), "yellow"))
            if group_rows:
                self._step_group(scaler, group_rows)
        finally:
            self._in_accumulating_loop = False
        return total_loss

    def _step_group(self, scaler: torch.amp.GradScaler, rows: int) -> None:
        """The group's summed row-weighted gradients divided by its ``rows`` (the mean gradient of
        the concatenated batches), clipped, then one optimiser step."""
        scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones
        stepped = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        for parameter in stepped:
            parameter.grad.div_(rows)
        if self.clip_grad_norm:
            clip_grad_norm_(stepped, **self.clip_grad_norm)
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad()

    def _check_nan(self, loss):
        # Every RecBole batch loop calls this once per batch: here it catches a loop that is not
        # ours stepping every batch while accumulation was asked for.
        if self.accumulation_steps > 1 and not self._in_accumulating_loop:
            raise ValueError(
                f"{type(self).__name__} trains with a batch loop of its own, which steps the optimiser "
                f"after every batch: accumulation_steps must be 1 for it, found {self.accumulation_steps}"
            )
        super()._check_nan(loss)


def _add_batch_loss(total: float | tuple | None, losses: torch.Tensor | tuple) -> float | tuple:
    """RecBole's epoch loss: the sum of the batch losses (per part when the model returns a tuple)."""
    if isinstance(losses, tuple):
        parts = tuple(part.item() for part in losses)
        return parts if total is None else tuple(map(sum, zip(total, parts)))
    return losses.item() if total is None else total + losses.item()


def exempt_from_weight_decay(name: str, parameter: torch.nn.Parameter) -> bool:
    """Whether weight decay should leave ``parameter`` (named ``name`` in its model) alone.

    Exempt: every parameter of at most one dimension (biases, LayerNorm and RMSNorm weights,
    per-head or per-channel gains and scalars); whatever its shape, a parameter named
    ``A_log``, ``dt_bias`` or ``D`` (Mamba-2's), marked ``_no_weight_decay`` (mamba-ssm's
    convention), named ``*bias`` / ``*biases``, or a norm's weight (``*norm.weight``,
    ``*norm_weight``). Pulling these towards zero does not make a simpler model, only another one
    (norm gains and skips towards zero, every head's state decay rate ``exp(A_log)`` towards 1);
    matrices and embedding tables decay. The rule reads names, shapes and attributes only, so it
    holds for any model.
    """
    leaf = name.rsplit(".", 1)[-1]
    return (
        parameter.ndim <= 1
        or leaf in _EXEMPT_LEAF_NAMES
        or bool(getattr(parameter, "_no_weight_decay", False))
        or leaf.lower().endswith(("bias", "biases"))
        or name.lower().endswith(("norm.weight", "norm_weight"))
    )


def weight_decay_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> list[dict]:
    """Optimiser parameter groups: the decayed parameters, then the exempt ones with
    ``weight_decay`` 0 (:func:`exempt_from_weight_decay`); an empty group is left out."""
    decayed, exempt = [], []
    for name, parameter in named_parameters:
        (exempt if exempt_from_weight_decay(name, parameter) else decayed).append(parameter)
    groups = [{"params": decayed}, {"params": exempt, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


class WeightDecayExemptionMixin:
    """``weight_decay_exempt``: the parameters RecBole's ``_build_optimizer`` receives (the model's,
    or those a trainer passes, e.g. RecVAE's encoder) split into :func:`weight_decay_groups`, for
    every learner; the optimiser's own ``weight_decay`` applies to the first group."""

    def _build_optimizer(self, **kwargs):
        weight_decay = kwargs.get("weight_decay", self.weight_decay)
        if self.config["weight_decay_exempt"] and weight_decay:
            names = {id(parameter): name for name, parameter in self.model.named_parameters()}
            named = [(names.get(id(p), ""), p) for p in kwargs.get("params", self.model.parameters())]
            exempt = [name for name, parameter in named if exempt_from_weight_decay(name, parameter)]
            getLogger().info(
                set_color("weight_decay_exempt", "blue")
                + f": no weight decay for {len(exempt)} of {len(named)} parameters: {exempt}"
            )
            kwargs["params"] = weight_decay_groups(named)
        return super()._build_optimizer(**kwargs)
