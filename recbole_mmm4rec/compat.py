"""The few narrow fixes RecBole 1.2.1 needs on current PyTorch.

Nothing here requires the user to set environment variables. The only global state touched is
RecBole's own: the anomaly mode its import sets, its list of dataset arguments, and the two
functions through which its ``data_preparation`` reads and writes saved dataloaders. What else
this package changes, it changes in subclasses: the trainers (:mod:`recbole_mmm4rec.trainer`),
and the dataset classes, which check atomic files and keep exact timestamps
(:mod:`recbole_mmm4rec.data.recbole_datasets`).

1. ``recbole.model.sequential_recommender.sine`` calls ``torch.autograd.set_detect_anomaly(True)``
   at import time, slowing every model's training (1.3x measured on SASRec here).
   :func:`import_recbole_models` imports RecBole's model packages once and restores the anomaly
   mode the caller had before.
2. torch >= 2.6 loads with ``weights_only=True``, which cannot read RecBole checkpoints (they
   pickle the ``Config`` object), and RecBole reads its saved datasets and dataloaders with plain
   ``pickle``, which runs whatever code a file names. :func:`load_checkpoint` is the one function
   through which every pickle is read (checkpoints, saved datasets, saved dataloaders, the
   storages nested in them): a restricted unpickler where every global goes through an
   allow-list (RecBole's and this package's classes, registered plugin classes,
   torch/numpy/scipy/pandas containers), only an allow-list of rebuild functions may be
   *called*, and classes are only ever created empty and filled with their saved state (never
   called, so e.g. ``Config.__init__``, which ``eval``s its values, cannot run). Anything else
   raises :class:`UntrustedCheckpointError`. torch's own ``weights_only`` loading with
   allow-listed globals cannot replace it: it calls any allow-listed class through REDUCE (so
   allowing ``Config`` would let a file run ``Config.__init__``), takes no module-wide
   allow-list (RecBole has hundreds of classes), and reads no plain pickle.
   The plugin trainers (:mod:`recbole_mmm4rec.trainer`) reload checkpoints through it;
   :func:`route_saved_dataloaders` makes RecBole's ``data_preparation`` load saved dataloaders
   through it (:mod:`recbole_mmm4rec.saved_data`).
3. RecBole reuses a saved dataset or saved dataloaders when the keys in its
   ``dataset_arguments`` list are unchanged; :func:`register_dataset_arguments` adds this
   package's dataset keys to that list, so changing them rebuilds instead of reusing stale data.
"""
from __future__ import annotations

import enum
import functools
import importlib
import inspect
import io
import os
import pickle
import types
from typing import Any

import numpy
import torch

# Functions and types that a checkpoint may *call* while it is unpickled (REDUCE): the rebuild
# functions of torch tensors and numpy arrays, and plain containers.
_CALLABLE_GLOBALS = frozenset(
    {
        "builtins.bytearray",
        "builtins.complex",
        "builtins.frozenset",
        "builtins.set",
        "builtins.slice",
        "_codecs.encode",
        "collections.OrderedDict",
        "logging.getLogger",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy.dtype",
        "torch.Size",
        "torch.device",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._utils._rebuild_sparse_tensor",
        "torch._utils._rebuild_tensor_v2",
        # pandas DataFrames (a saved dataset's features before RecBole's build())
        "pandas._libs.internals._unpickle_block",
        "pandas.core.internals.managers.BlockManager",
    }
)
# Modules whose classes may be *created empty and filled with saved state* (NEWOBJ + BUILD):
# RecBole's Config, enums, models, layers, datasets, dataloaders and samplers, ours, what RecBole
# models keep in ``other_parameter`` (sparse matrices, numpy arrays, torch layers), the pandas
# tables of a saved dataset and the torch samplers of saved dataloaders.
_CLASS_MODULE_PREFIXES = (
    "recbole.",
    "recbole_mmm4rec.",
    "torch.nn.modules.",
    "torch.utils.data.sampler",
    "scipy.sparse.",
    "numpy.dtypes",
    "pandas.core.frame",
    "pandas.core.series",
    "pandas.core.indexes.",
)
# Single classes outside those modules (not all of numpy: numpy.memmap's constructor opens files).
_CLASS_GLOBALS = frozenset({"numpy.ndarray", "yaml.loader.FullLoader"})
# Classes registered as plugin models or datasets from outside our package (user plugins).
_TRUSTED_CLASSES: set[str] = set()


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint, saved dataset or saved dataloader file asks for something outside what
    RecBole and this package write, or cannot be read at all."""


class DamagedFileError(UntrustedCheckpointError):
    """A checkpoint, saved dataset or saved dataloader file that cannot be read (truncated,
    corrupted): unlike a refused one, an intact earlier copy may take its place."""


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


def register_dataset_arguments(keys: list[str]) -> None:
    """Make RecBole treat ``keys`` as dataset arguments when it validates saved datasets."""
    from recbole.utils.argument_list import dataset_arguments

    dataset_arguments.extend(key for key in keys if key not in dataset_arguments)


def add_trusted_class(cls: type) -> None:
    """Allow ``cls`` in checkpoints that :func:`load_checkpoint` reads (plugin registration)."""
    _TRUSTED_CLASSES.add(f"{cls.__module__}.{cls.__qualname__}")


def _storage_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes``, which plain ``pickle`` writes for every tensor (a
    nested ``torch.save``) and which loads it with ``torch.load(weights_only=False)``: the same
    load under the same restrictions."""
    return torch.load(io.BytesIO(data), weights_only=False, pickle_module=_RESTRICTED_PICKLE)


def _new_pandas_index(cls: Any, state: dict) -> Any:
    """pandas' ``_new_Index``, which calls ``cls.__new__(cls, **state)``: for pandas' Index
    classes only."""
    import pandas
    from pandas.core.indexes.base import _new_Index

    if not (isinstance(cls, type) and issubclass(cls, pandas.Index)):
        raise UntrustedCheckpointError(f"the file rebuilds a pandas index as {cls!r}, which is not an index class")
    return _new_Index(cls, state)


def _bound_method(obj: Any, name: Any) -> Any:
    """``getattr`` as pickles of bound methods use it (RecBole's dataloaders keep their own
    ``collate_fn``): a public method that the class of an unpickled instance defines, never an
    attribute of a class, function or module."""
    static = inspect.getattr_static(type(obj), name, None) if isinstance(name, str) else None
    if (
        isinstance(obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType))
        or not isinstance(name, str)
        or name.startswith("_")
        or not isinstance(static, types.FunctionType)
    ):
        raise UntrustedCheckpointError(f"the file reads attribute {name!r} of a {type(obj).__name__}, which is not allowed")
    return getattr(obj, name)


# Globals a pickle may call that are replaced by a restricted equivalent.
_SUBSTITUTES = {
    "torch.storage._load_from_bytes": _storage_from_bytes,
    "pandas.core.indexes.base._new_Index": _new_pandas_index,
    "builtins.getattr": _bound_method,
}


@functools.lru_cache(maxsize=1)
def _callable_objects() -> tuple:
    """The objects named by ``_CALLABLE_GLOBALS`` and the substitutes, compared by identity when
    a pickle calls."""
    objects = list(_SUBSTITUTES.values())
    for full_name in sorted(_CALLABLE_GLOBALS):
        module, _, name = full_name.rpartition(".")
        obj = getattr(importlib.import_module(module), name, None)
        if obj is not None:
            objects.append(obj)
    return tuple(objects)


def _check_dtype_state(dtype: numpy.dtype, state: Any) -> None:
    """numpy applies a dtype's pickled state as given: an item size or flags ("holds Python
    objects", ...) that do not fit the type make numpy read and write outside its buffers (the
    fuzz test crashed it so). Only the state numpy itself writes for the type, in one of the
    three byte orders, is accepted; structured and datetime dtypes, which RecBole never saves,
    are not."""
    byte_order = state[1] if isinstance(state, tuple) and len(state) == 8 else None
    if byte_order not in ("<", ">", "|") or state != dtype.newbyteorder(byte_order).__reduce__()[2]:
        raise UntrustedCheckpointError(f"the file gives numpy dtype {dtype} a state numpy never writes for it: {state!r}")


class _RestrictedUnpickler(pickle._Unpickler):
    """Python's unpickler with every way of reaching or calling code put behind allow-lists."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        full_name = f"{module}.{name}"
        if full_name in _SUBSTITUTES:
            return _SUBSTITUTES[full_name]
        if full_name in _CALLABLE_GLOBALS:
            return super().find_class(module, name)
        named = full_name in _TRUSTED_CLASSES or full_name in _CLASS_GLOBALS
        # Never import a module the allow-lists do not name: importing runs its code.
        if named or module.startswith(_CLASS_MODULE_PREFIXES):
            try:
                obj = getattr(importlib.import_module(module), name, None)
            except ImportError:
                obj = None
            # A class named outright, or one that lives where the pickle says (not a class
            # re-exported from a trusted module).
            if isinstance(obj, type) and (named or obj.__module__ == module):
                return obj
        raise UntrustedCheckpointError(
            f"the file references {full_name}, which RecBole and recbole_mmm4rec files never contain"
        )

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        is_enum_lookup = isinstance(func, type) and issubclass(func, enum.Enum)
        if not (is_enum_lookup or any(func is allowed for allowed in _callable_objects())):
            name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', type(func).__name__)}"
            raise UntrustedCheckpointError(f"the file calls {name}, which is not allowed")
        self.stack[-1] = func(*args)

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        # BUILD's slot state is applied with setattr: on a class or function it would rewrite code.
        if isinstance(inst, (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType)):
            raise UntrustedCheckpointError("the file sets attributes of a class or function")
        if isinstance(inst, numpy.dtype):
            _check_dtype_state(inst, state)
        super().load_build()

    def _refuse_instantiation(self) -> None:
        raise UntrustedCheckpointError("the file calls a class through INST/OBJ, which is not allowed")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.INST[0]] = _refuse_instantiation
    dispatch[pickle.OBJ[0]] = _refuse_instantiation


def _restricted_load(file, **kwargs) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


# The pickle module handed to torch.load: torch subclasses its Unpickler and calls its load.
_RESTRICTED_PICKLE = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler, load=_restricted_load, __name__="recbole_mmm4rec_restricted_pickle"
)

TRUST_HINT = "if you trust the file, pass trust=True (run_recbole, run_pretrain, run_hyper, run_benchmark: --trust_checkpoint=True)"


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = None, trust: bool = False, kind: str = "checkpoint"
) -> Any:
    """Read any pickle of RecBole or this package: a torch checkpoint (zip or legacy format), or a
    plain pickle (RecBole's saved datasets and saved dataloaders).

    The file loads through a restricted unpickler (see the module docstring); a file that needs
    anything else raises :class:`UntrustedCheckpointError` naming it and what it asked for, and
    so does a damaged file, whatever fails inside the unpickler. ``trust=True`` unpickles
    without restriction. ``kind`` names the file in messages ("saved dataset", ...).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} {path} does not exist")
    pickle_module = pickle if trust else _RESTRICTED_PICKLE
    try:
        with open(path, "rb") as f:
            # torch's own test: its zip files start with a local file header.
            if f.read(4) != b"PK\x03\x04":
                # A plain pickle is one object; a legacy torch file starts with torch's magic number.
                f.seek(0)
                first = pickle_module.load(f)
                if not (type(first) is int and first == torch.serialization.MAGIC_NUMBER):
                    return first
            f.seek(0)
            return torch.load(f, map_location=map_location, weights_only=False, pickle_module=pickle_module)
    except UntrustedCheckpointError as error:
        raise UntrustedCheckpointError(
            f"{path} is not a RecBole / recbole_mmm4rec {kind}: {error}. Unpickling it could "
            f"run arbitrary code. Delete it, or {TRUST_HINT}."
        ) from None
    except Exception as error:
        # A damaged file fails anywhere in pickle, torch or numpy (struct.error, IndexError,
        # TypeError, ...): one error type, naming the file, for all of them.
        raise DamagedFileError(
            f"{path}: not a readable {kind} ({type(error).__name__}: {error}); delete it or replace it "
            "with an intact copy"
        ) from error


def trusts_files(config: Any) -> bool:
    """Whether the run's config opts out of the restrictions (``trust_checkpoint: True``); a
    config without the key (RecBole's own) does not."""
    return config["trust_checkpoint"] is True


def route_saved_dataloaders() -> None:
    """Make RecBole's ``data_preparation`` read saved dataloaders through :func:`load_checkpoint`
    (and check them against their source files) and write them atomically: it looks both
    functions up in its module at each call."""
    import recbole.data
    import recbole.data.utils

    from recbole_mmm4rec import saved_data

    for module in (recbole.data.utils, recbole.data):
        module.load_split_dataloaders = saved_data.load_split_dataloaders
        module.save_split_dataloaders = saved_data.save_split_dataloaders


def restore_model_state(model: torch.nn.Module, checkpoint: dict) -> None:
    """Put a checkpoint's weights and RecBole ``other_parameter`` into ``model``."""
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
