"""The few narrow fixes RecBole 1.2.1 needs on current PyTorch.

Nothing here changes global state except undoing RecBole's own global side effect (autograd
anomaly detection) and nothing requires the user to set environment variables.

1. ``recbole.model.sequential_recommender.sine`` calls ``torch.autograd.set_detect_anomaly(True)``
   at import time, slowing every model's training 1.3-1.8x. :func:`import_recbole_models` imports
   RecBole's model packages once and restores the anomaly mode the caller had before.
2. torch >= 2.6 loads with ``weights_only=True``, which cannot read RecBole checkpoints (they
   pickle the ``Config`` object, with pickle protocol 4). :func:`load_checkpoint` scans the
   pickle's global references without executing it and only unpickles files whose globals are
   RecBole's, ours, or torch's safe set; anything else is refused with the offending names.
   :func:`compatible_trainer` gives RecBole trainer classes whose checkpoint reloads use it.
"""
from __future__ import annotations

import importlib
import io
import os
import pickletools
import zipfile
from typing import Any

import torch

# Modules whose classes may appear in a RecBole checkpoint we write: the Config (ours or
# RecBole's), enums, the model class it records, and the YAML loader class it keeps.
_TRUSTED_MODULE_PREFIXES = ("recbole.", "recbole_mmm4rec.")
_TRUSTED_GLOBALS = frozenset(
    {
        "collections.OrderedDict",
        "collections.defaultdict",
        "builtins.set",
        "builtins.frozenset",
        "builtins.slice",
        "builtins.complex",
        "builtins.bytearray",
        "_codecs.encode",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
        "yaml.loader.FullLoader",
        "torch.device",
        "torch.Size",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch.FloatStorage",
        "torch.DoubleStorage",
        "torch.HalfStorage",
        "torch.BFloat16Storage",
        "torch.LongStorage",
        "torch.IntStorage",
        "torch.BoolStorage",
        "torch.storage.UntypedStorage",
        "torch.float32",
        "torch.float64",
        "torch.int64",
    }
)
# Classes registered as plugin models or datasets from outside our package (user plugins).
_TRUSTED_CLASSES: set[str] = set()
_STRING_OPCODES = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "SHORT_BINSTRING",
        "BINSTRING",
        "STRING",
    }
)
_MEMO_GET_OPCODES = frozenset({"GET", "BINGET", "LONG_BINGET"})


class UntrustedCheckpointError(RuntimeError):
    """A checkpoint references Python objects outside RecBole, recbole_mmm4rec and torch."""


def import_recbole_models() -> None:
    """Import RecBole's model packages once, undoing the anomaly mode that ``sine.py`` sets."""
    anomaly_was_enabled = torch.is_anomaly_enabled()
    for package in (
        "recbole.model.general_recommender",
        "recbole.model.context_aware_recommender",
        "recbole.model.sequential_recommender",
        "recbole.model.knowledge_aware_recommender",
        "recbole.model.exlib_recommender",
    ):
        try:
            importlib.import_module(package)
        except ImportError:
            # exlib models need optional libraries (xgboost, lightgbm); their absence only
            # matters to someone who asks for those models, and RecBole says so then.
            continue
    torch.autograd.set_detect_anomaly(anomaly_was_enabled)


def _pickle_bytes(path: str) -> bytes:
    """The pickle stream of a checkpoint file: ``data.pkl`` of a torch zip, or the whole file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(names) != 1:
                raise UntrustedCheckpointError(
                    f"{path}: expected one data.pkl inside the torch archive, found {names}"
                )
            return archive.read(names[0])
    with open(path, "rb") as f:
        return f.read()


def pickle_globals(data: bytes) -> set[str]:
    """Every ``module.name`` global a pickle stream references, found without executing it.

    ``STACK_GLOBAL`` takes its module and name from the two most recent strings pushed, directly
    or through the memo, so the scan follows string pushes and memo reads.
    """
    found: set[str] = set()
    strings: list[str] = []
    memo: dict[int, str | None] = {}
    last_string: str | None = None
    for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
        name = opcode.name
        if name in _STRING_OPCODES:
            last_string = arg if isinstance(arg, str) else arg.decode("latin-1")
            strings.append(last_string)
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = last_string
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = last_string
        elif name in _MEMO_GET_OPCODES:
            value = memo.get(int(arg))
            if value is not None:
                strings.append(value)
        elif name in ("GLOBAL", "INST"):
            found.add(arg.replace(" ", "."))
        elif name == "STACK_GLOBAL":
            if len(strings) < 2:
                raise UntrustedCheckpointError("STACK_GLOBAL without a module and name")
            found.add(f"{strings[-2]}.{strings[-1]}")
        if name not in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            last_string = None
    return found


def add_trusted_class(cls: type) -> None:
    """Allow ``cls`` in checkpoints that :func:`load_checkpoint` reads (plugin registration)."""
    _TRUSTED_CLASSES.add(f"{cls.__module__}.{cls.__qualname__}")


def _is_trusted(global_name: str) -> bool:
    if global_name in _TRUSTED_GLOBALS or global_name in _TRUSTED_CLASSES:
        return True
    if not global_name.startswith(_TRUSTED_MODULE_PREFIXES):
        return False
    # Classes only: a function of ours or RecBole's has no business in a checkpoint.
    module_name, _, attribute = global_name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        return False
    return isinstance(obj, type)


def untrusted_globals(path: str | os.PathLike) -> list[str]:
    """The globals of a checkpoint that are not RecBole's, ours or torch's safe ones."""
    path = os.fspath(path)
    try:
        names = pickle_globals(_pickle_bytes(path))
    except (ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UntrustedCheckpointError(
            f"{path}: not a readable torch checkpoint ({error})"
        ) from error
    return sorted(name for name in names if not _is_trusted(name))


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = None, trust: bool = False
) -> Any:
    """Load a RecBole checkpoint under torch >= 2.6.

    Files that reference only RecBole's and recbole_mmm4rec's classes, plus torch's and numpy's
    tensor machinery, are unpickled with ``weights_only=False``. Anything else raises
    :class:`UntrustedCheckpointError` naming the foreign globals, unless ``trust=True``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not trust:
        foreign = untrusted_globals(path)
        if foreign:
            raise UntrustedCheckpointError(
                f"{path} is not a RecBole / recbole_mmm4rec checkpoint: it references "
                f"{', '.join(foreign[:10])}{' ...' if len(foreign) > 10 else ''}. Unpickling it "
                "could run arbitrary code; if you trust the file, pass trust=True."
            )
    return torch.load(path, map_location=map_location, weights_only=False)


class _CheckpointReloadMixin:
    """Routes RecBole's two checkpoint reads (best-model reload, resume) through load_checkpoint."""

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and eval_data:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(
                f"Loading model structure and parameters from {checkpoint_file}"
            )
        return super().evaluate(
            eval_data, load_best_model=False, show_progress=show_progress
        )

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            raise ValueError(
                f"{resume_file} was saved by model {checkpoint['config']['model']}, "
                f"but this run trains {self.config['model']}"
            )
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(
            f"Checkpoint loaded. Resume training from epoch {self.start_epoch}"
        )


_COMPATIBLE_TRAINERS: dict[type, type] = {}


def compatible_trainer(trainer_class: type) -> type:
    """``trainer_class`` with checkpoint reloads that work under torch >= 2.6.

    Trainers outside RecBole's ``Trainer`` hierarchy (decision trees, traditional models) do not
    reload torch checkpoints and are returned unchanged.
    """
    from recbole.trainer import Trainer

    if not issubclass(trainer_class, Trainer):
        return trainer_class
    if trainer_class not in _COMPATIBLE_TRAINERS:
        _COMPATIBLE_TRAINERS[trainer_class] = type(
            trainer_class.__name__, (_CheckpointReloadMixin, trainer_class), {}
        )
    return _COMPATIBLE_TRAINERS[trainer_class]
