"""Saved datasets and saved dataloaders: read through the restricted loader, reused only while the
files they were built from are unchanged.

RecBole reuses a saved dataset (``<checkpoint_dir>/<dataset>-<class>.pth``, or
``dataset_save_path``) and saved dataloaders (``<checkpoint_dir>/<dataset>-for-<model>-dataloader.pth``,
or ``dataloaders_save_path``) whenever its dataset arguments are unchanged, and unpickles them
with plain ``pickle``: a file planted there, or named by a checkpoint's config, runs any code it
holds, and a dataset whose feature or atomic files changed since is reused as it was. Here both
are read by :func:`recbole_mmm4rec.compat.load_checkpoint` (``trust_checkpoint: True`` opts out)
and reused only while the dataset arguments and every source file are unchanged (size and
SHA-256, recorded when the dataset is built for saving; the modification time is reported);
otherwise they are rebuilt, with a warning naming what changed. Both keep RecBole's file formats
(a pickled dataset; a list of ``(dataloader, generator state)``) and are written to a temporary
file renamed when complete.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import time
from logging import getLogger
from typing import Any

import torch
from recbole.config import Config
from recbole.data.dataloader import AbstractDataLoader
from recbole.data.dataset import Dataset
from recbole.utils import set_color
from recbole.utils.argument_list import dataset_arguments  # includes our keys (compat)

from recbole_mmm4rec import compat
from recbole_mmm4rec.data.features import atomic_write

# The attribute of a dataset that records its source files: path -> size, mtime_ns, sha256.
SOURCE_RECORDS = "source_file_records"


def dataset_source_files(config: Any, dataset_class: type) -> list[str]:
    """The files a ``dataset_class`` dataset is built from, absolute and sorted: RecBole's atomic
    files of the dataset that exist (interactions, users, items, knowledge graph, links,
    ``additional_feat_suffix``), and the files the class names through its ``feature_files(config)``
    classmethod (:class:`~recbole_mmm4rec.data.MultiModalSequentialDataset`'s feature matrices)."""
    folder, name = config["data_path"], config["dataset"]
    benchmark = config["benchmark_filename"]
    suffixes = [f"{part}.inter" for part in benchmark] if benchmark else ["inter"]
    suffixes += ["user", "item", "kg", "link", *(config["additional_feat_suffix"] or [])]
    files = [os.path.join(folder, f"{name}.{suffix}") for suffix in suffixes]
    feature_files = getattr(dataset_class, "feature_files", None)
    if feature_files is not None:
        files += feature_files(config)
    return sorted({os.path.abspath(path) for path in files if os.path.isfile(path)})


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_records(config: Any, dataset_class: type) -> dict[str, dict]:
    """What :func:`changed_source` compares: each source file's size, mtime and SHA-256."""
    records = {}
    for path in dataset_source_files(config, dataset_class):
        stat = os.stat(path)
        records[path] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(path)}
    return records


def _when(mtime_ns: Any) -> str:
    """A recorded modification time for messages ("?" for a record that holds none)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime_ns / 1e9))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def changed_source(recorded: Any, config: Any, dataset_class: type) -> str | None:
    """Why a dataset built from the files in ``recorded`` is stale under ``config``, or None.

    A file counts as changed when its size or contents (SHA-256) differ; a touched file with the
    same contents does not.
    """
    if not isinstance(recorded, dict):
        return "it holds no record of the files it was built from (saved by RecBole itself or by an older recbole-mmm4rec)"
    current = dataset_source_files(config, dataset_class)
    gone = sorted(set(recorded) - set(current))
    if gone:
        return f"it was built from {gone[0]}, which no longer exists or is no longer read under this config"
    for path in current:
        old = recorded.get(path)
        if not isinstance(old, dict):
            return f"{path} was not among the files it was built from"
        stat = os.stat(path)
        if stat.st_size != old.get("size") or _sha256(path) != old.get("sha256"):
            return (
                f"{path} changed since it was built (size {old.get('size')} -> {stat.st_size} bytes, "
                f"modified {_when(old.get('mtime_ns'))} -> {_when(stat.st_mtime_ns)})"
            )
    return None


def changed_argument(config: Any, saved_config: Any, extra_keys: tuple[str, ...] = ()) -> str | None:
    """RecBole's rule for reuse: the first dataset argument (or seed, ...) that differs, or None."""
    if not isinstance(saved_config, Config):
        return f"it holds a {type(saved_config).__name__} where RecBole keeps its Config"
    for key in [*dataset_arguments, "seed", "repeatable", *extra_keys]:
        if config[key] != saved_config[key]:
            return f"config key {key} was {saved_config[key]!r} when it was saved, now {config[key]!r}"
    return None


def _stale_dataset(dataset: Any, config: Any, dataset_class: type) -> str | None:
    if not isinstance(dataset, dataset_class):
        return f"it holds a {type(dataset).__name__}, not a {dataset_class.__name__}"
    return changed_argument(config, getattr(dataset, "config", None)) or changed_source(
        getattr(dataset, SOURCE_RECORDS, None), config, dataset_class
    )


def load_or_build_dataset(config: Any, dataset_class: type) -> Dataset:
    """The saved dataset (``dataset_save_path``, else the file ``save_dataset`` writes) while it
    is still valid (see the module docstring), else a new ``dataset_class(config)``, saved when
    ``save_dataset`` is set."""
    default_file = os.path.join(config["checkpoint_dir"], f"{config['dataset']}-{dataset_class.__name__}.pth")
    saved_file = config["dataset_save_path"] or default_file
    logger = getLogger()
    if os.path.isfile(saved_file):
        dataset = compat.load_checkpoint(saved_file, kind="saved dataset", trust=compat.trusts_files(config))
        reason = _stale_dataset(dataset, config, dataset_class)
        if reason is None:
            logger.info(set_color("Load filtered dataset from", "pink") + f": [{saved_file}]")
            return dataset
        logger.warning(f"not reusing the saved dataset {saved_file}: {reason}; building the dataset again")
    # Recorded before building: a file that changes meanwhile makes the saved dataset stale.
    records = source_records(config, dataset_class) if config["save_dataset"] or config["save_dataloaders"] else None
    dataset = dataset_class(config)
    if records is not None:
        setattr(dataset, SOURCE_RECORDS, records)  # the split datasets in saved dataloaders keep it
    if config["save_dataset"]:
        logger.info(set_color("Saving filtered dataset into ", "pink") + f"[{default_file}]")
        atomic_write(default_file, lambda f: pickle.dump(dataset, f))
    return dataset


def _dataloaders_file(config: Any) -> str:
    return os.path.join(config["checkpoint_dir"], f"{config['dataset']}-for-{config['model']}-dataloader.pth")


def save_split_dataloaders(config: Any, dataloaders: tuple) -> None:
    """RecBole's ``save_split_dataloaders``, written atomically; the dataloaders keep their
    generators afterwards (RecBole's leaves them None, so the saving run shuffled otherwise than
    the runs that load the file)."""
    file_path = _dataloaders_file(config)
    getLogger().info(set_color("Saving split dataloaders into", "pink") + f": [{file_path}]")
    generators = [(dataloader.generator, getattr(dataloader.sampler, "generator", None)) for dataloader in dataloaders]
    serialized = []
    for dataloader in dataloaders:
        serialized.append((dataloader, dataloader.generator.get_state()))
        dataloader.generator = dataloader.sampler.generator = None  # a torch.Generator does not pickle
    try:
        atomic_write(file_path, lambda f: pickle.dump(serialized, f))
    finally:
        for dataloader, (own, sampler_generator) in zip(dataloaders, generators):
            dataloader.generator, dataloader.sampler.generator = own, sampler_generator


def _stale_dataloaders(saved: Any, config: Any) -> str | None:
    if not (
        isinstance(saved, (list, tuple))
        and len(saved) == 3
        and all(
            isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], AbstractDataLoader)
            and isinstance(pair[1], torch.Tensor) and pair[1].dtype == torch.uint8
            for pair in saved
        )
    ):
        return "it does not hold RecBole's three split dataloaders with their generator states"
    train_data = saved[0][0]
    dataset = getattr(train_data, "_dataset", None)
    return changed_argument(config, getattr(train_data, "config", None), ("eval_args",)) or changed_source(
        getattr(dataset, SOURCE_RECORDS, None), config, type(dataset)
    )


def load_split_dataloaders(config: Any) -> tuple | None:
    """RecBole's ``load_split_dataloaders`` (``dataloaders_save_path``, else the file
    ``save_dataloaders`` writes) through :func:`recbole_mmm4rec.compat.load_checkpoint`; None,
    so that they are built again, when the file is absent or stale (see the module docstring)."""
    file_path = config["dataloaders_save_path"] or _dataloaders_file(config)
    if not os.path.exists(file_path):
        return None
    saved = compat.load_checkpoint(file_path, kind="saved dataloaders", trust=compat.trusts_files(config))
    reason = _stale_dataloaders(saved, config)
    logger = getLogger()
    if reason is not None:
        logger.warning(f"not reusing the saved dataloaders {file_path}: {reason}; building them again")
        return None
    dataloaders = []
    for dataloader, generator_state in saved:
        generator = torch.Generator()
        generator.set_state(generator_state)
        dataloader.generator = dataloader.sampler.generator = generator
        dataloader.update_config(config)
        dataloaders.append(dataloader)
    logger.info(set_color("Load split dataloaders from", "pink") + f": [{file_path}]")
    return tuple(dataloaders)
