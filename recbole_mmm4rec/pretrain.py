"""Pre-training on one or several datasets (domains): ``run_pretrain``'s flow.

Several datasets are merged once into ``<data_path>/<A>+<B>`` by
:func:`recbole_mmm4rec.dataset_scripts.merge_domains.merge_domains`: user and item tokens are
namespaced by domain, so no two domains share an item, and the feature rows follow their items.
Every interaction trains (no validation or test split); RecBole's sequential augmentation makes
every prefix of every sequence a sample. The model's stage YAML (``properties/pretrain/<model>.yaml``)
sets the pre-training loss (MMM4Rec: in-batch cross-entropy with repeated targets masked).

Checkpoints go to ``<checkpoint_dir>/<model>-<dataset>-pretrain-<settings hash>-<epochs done>.pth``
every ``save_step`` epochs and after the last. A run with the same settings (any ``epochs``)
resumes from the latest of them instead of starting over (``resume: False`` starts over); a
latest checkpoint that cannot be read (a kill while the disk wrote it, a truncated copy) is
skipped with a warning for the one before it. Each checkpoint carries the random state (torch,
numpy, Python, CUDA) and the shuffling generator of the training data, so that a resumed
single-process run draws the same batches and dropout masks as an uninterrupted one: the same
losses.
"""
from __future__ import annotations

import glob
import os
import re
import time
from logging import getLogger
from typing import Any, Sequence

import torch
import yaml
from recbole.utils import set_color

from recbole_mmm4rec import compat, registry
from recbole_mmm4rec.config import PluginConfig, settings_hash
from recbole_mmm4rec.history import EpochCallback
from recbole_mmm4rec.quick_start import (
    build_dataset_folder,
    build_model_and_trainer,
    create_dataset,
    ensure_dataset_folder,
    prepare_model,
    start_run,
    training_loader,
)
from recbole_mmm4rec.trainer import ResumablePretrainTrainer

DOMAIN_JOIN = "+"
# Every interaction is a training sample: one split holding everything.
PRETRAIN_EVAL_ARGS = {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "TO", "group_by": "user", "mode": "full"}
# Settings that do not change what a pre-training run computes: a run differing only in these
# resumes the other's checkpoints.
RUN_ONLY_KEYS = {
    "epochs", "save_step", "resume", "checkpoint_dir", "data_path", "show_progress", "state", "verbose",
    "device", "gpu_id", "use_gpu", "local_rank", "world_size", "nproc", "offset", "ip", "port",
    "single_spec", "worker", "log_wandb", "wandb_project", "shuffle", "benchmark_filename", "memory_map_features",
    "trust_checkpoint",
}


def merged_dataset_name(datasets: Sequence[str]) -> str:
    return DOMAIN_JOIN.join(datasets)


def domain_config_files(datasets: Sequence[str]) -> list[str]:
    """The first domain's ``properties/dataset/<name>.yaml`` (modalities, feature sizes, policies),
    after checking the other domains' YAMLs attach the same modalities."""
    files = [os.path.join(registry.PROPERTIES_DIR, "dataset", f"{name}.yaml") for name in datasets]
    present = {name: file for name, file in zip(datasets, files) if os.path.isfile(file)}
    if len(datasets) == 1 or not present:
        return []  # one dataset: PluginConfig layers its YAML itself
    declared = {}
    for name, file in present.items():
        with open(file, encoding="utf-8") as f:
            settings = yaml.safe_load(f) or {}
        declared[name] = (settings.get("modalities"), settings.get("modality_dims"))
    if len(set(map(repr, declared.values()))) > 1:
        listing = "; ".join(f"{name}: modalities {m}, dims {d}" for name, (m, d) in declared.items())
        raise ValueError(f"the domains declare different modalities or feature sizes ({listing}); pre-train on domains with the same encoders")
    return [next(iter(present.values()))]


def prepare_domains(datasets: Sequence[str], data_root: str, modalities: Sequence[str]) -> str:
    """Every domain's folder under ``data_root`` (built if this package can), merged when several;
    returns the dataset name to train on."""
    if len(set(datasets)) != len(datasets) or not datasets:
        raise ValueError(f"--datasets must name one or more different datasets, found {list(datasets)}")
    for name in datasets:
        ensure_dataset_folder(name, os.path.join(data_root, name))
    if len(datasets) == 1:
        return datasets[0]
    from recbole_mmm4rec.dataset_scripts.merge_domains import merge_domains

    name = merged_dataset_name(datasets)
    folder = os.path.join(data_root, name)
    if not os.path.isfile(os.path.join(folder, f"{name}.inter")):
        folders = [os.path.join(data_root, domain) for domain in datasets]
        build_dataset_folder(name, folder, lambda staging: merge_domains(folders, name, staging, modalities))
    return name


def checkpoint_pattern(config: PluginConfig) -> str:
    """``{}`` stands for the number of epochs done."""
    name = f"{config['model']}-{config['dataset']}-pretrain-{settings_hash(config, RUN_ONLY_KEYS)}-{{}}.pth"
    return os.path.join(config["checkpoint_dir"], name)


def saved_checkpoints(config: PluginConfig) -> list[str]:
    """The checkpoints of these settings, most epochs done first."""
    pattern = checkpoint_pattern(config)
    done = {}
    for file in glob.glob(glob.escape(pattern).replace("{}", "*")):
        match = re.fullmatch(re.escape(pattern).replace(r"\{\}", r"(\d+)"), file)
        if match:
            done[int(match.group(1))] = file
    return [done[epochs] for epochs in sorted(done, reverse=True)]


def latest_checkpoint(config: PluginConfig) -> str | None:
    """The checkpoint of these settings with the most epochs done, if any."""
    return next(iter(saved_checkpoints(config)), None)


def resume_from_intact(trainer, checkpoints: Sequence[str]) -> str | None:
    """Resume ``trainer`` from the first of ``checkpoints`` that can be read; an unreadable one
    is skipped with a warning (a refused one, which may be hostile, is still an error)."""
    for file in checkpoints:
        try:
            trainer.resume_checkpoint(file)
        except compat.DamagedFileError as error:
            getLogger().warning(f"{error}. Resuming from the checkpoint before it instead, if any.")
            continue
        return file
    return None


def pretrain_config(
    model: str | type,
    datasets: Sequence[str],
    config_file_list: Sequence[str] | None = None,
    config_dict: dict | None = None,
    cmd_args: Sequence[str] = (),
) -> PluginConfig:
    settings = {"eval_args": PRETRAIN_EVAL_ARGS, **(config_dict or {}), "train_stage": "pretrain"}
    return PluginConfig(
        model=model,
        dataset=merged_dataset_name(datasets),
        config_file_list=domain_config_files(datasets) + list(config_file_list or []),
        config_dict=settings,
        cmd_args=cmd_args,
    )


def run_pretrain(
    model: str | type,
    datasets: Sequence[str],
    config_file_list: Sequence[str] | None = None,
    config_dict: dict | None = None,
    cmd_args: Sequence[str] = (),
    epoch_callback: EpochCallback | None = None,
) -> dict[str, Any]:
    """Pre-train ``model`` on ``datasets`` (one process, or one rank of a distributed run).
    ``epoch_callback`` is called with each epoch's record as it ends.

    Returns ``checkpoint`` (the last one saved), ``resumed_from`` (or None), ``epochs_trained``
    (this call), ``train_loss`` (epoch -> loss), ``seconds_per_epoch``, ``epoch_history_file``.
    """
    compat.import_recbole_models()
    config = pretrain_config(model, datasets, config_file_list, config_dict, cmd_args)
    logger = start_run(config)
    if config["single_spec"]:  # a distributed run's launcher prepares them before starting the ranks
        prepare_domains(datasets, os.path.dirname(config["data_path"]), config["modalities"] or [])

    dataset = create_dataset(config)
    logger.info(dataset)
    train_dataset = dataset.build()[0]
    train_data = training_loader(config, train_dataset, shuffle=config["shuffle"])
    logger.info(
        set_color("[Pre-training]", "pink") + f": {len(train_dataset):,} "
        + ("windows (train_mode sequence: every interaction a target once)" if train_dataset.windows is not None
           else "samples (every prefix of every sequence)")
        + f", batch {config['train_batch_size']}, {len(train_data)} batches per epoch"
    )
    model, _ = build_model_and_trainer(config, train_data)
    prepare_model(model, config)
    logger.info(model)
    trainer = ResumablePretrainTrainer(config, model, checkpoint_pattern(config), epoch_callback=epoch_callback)
    resumed_from = resume_from_intact(trainer, saved_checkpoints(config)) if config["resume"] is not False else None
    started = time.perf_counter()
    first_epoch = trainer.start_epoch
    trainer.fit(train_data, None, saved=True, show_progress=config["show_progress"])
    epochs_trained = max(0, trainer.epochs - first_epoch)
    if not config["single_spec"]:
        torch.distributed.destroy_process_group()
    return {
        "checkpoint": trainer.saved_model_file if os.path.isfile(trainer.saved_model_file) else None,
        "resumed_from": resumed_from,
        "epochs_trained": epochs_trained,
        "train_loss": dict(trainer.train_loss_dict),
        "seconds_per_epoch": (time.perf_counter() - started) / max(epochs_trained, 1),
        "epoch_history_file": trainer.epoch_history.csv_path,
    }


def _rank_main(rank: int, queue, run_args: tuple, distributed: dict) -> None:
    model, datasets, config_file_list, config_dict, cmd_args = run_args
    result = run_pretrain(model, datasets, config_file_list, {**(config_dict or {}), **distributed, "local_rank": rank}, cmd_args)
    if rank == 0 and distributed["offset"] == 0:
        queue.put(result)


def launch_pretrain(
    model: str,
    datasets: Sequence[str],
    config_file_list: Sequence[str] | None = None,
    config_dict: dict | None = None,
    cmd_args: Sequence[str] = (),
    nproc: int = 1,
    world_size: int = -1,
    ip: str = "localhost",
    port: str | int = 5678,
    group_offset: int = 0,
) -> dict[str, Any] | None:
    """:func:`run_pretrain` in one process, or in ``nproc`` processes of a distributed run of
    ``world_size`` processes in all (DDP; gloo on CPU, NCCL on GPUs), as RecBole's ``--nproc``,
    ``--world_size``, ``--ip``, ``--port`` and ``--group_offset``. Each process trains on its
    share of every batch. Returns rank 0's result on the machine that runs it, else None.
    """
    run_args = (model, list(datasets), config_file_list, config_dict, list(cmd_args))
    if nproc == 1 and world_size <= 0:
        return run_pretrain(*run_args)
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, found {nproc}")
    world_size = world_size if world_size > 0 else nproc
    if group_offset + nproc > world_size:
        raise ValueError(f"--group_offset {group_offset} + --nproc {nproc} exceeds --world_size {world_size}")
    config = pretrain_config(*run_args[:4], cmd_args=run_args[4])
    prepare_domains(datasets, os.path.dirname(config["data_path"]), config["modalities"] or [])
    distributed = {"world_size": world_size, "nproc": nproc, "ip": ip, "port": int(port), "offset": group_offset}
    if "memory_map_features" not in config.external_config_dict:
        distributed["memory_map_features"] = True  # one copy of the feature tables for all ranks
    queue = torch.multiprocessing.get_context("spawn").SimpleQueue()
    torch.multiprocessing.spawn(_rank_main, args=(queue, run_args, distributed), nprocs=nproc, join=True)
    return queue.get() if group_offset == 0 else None
