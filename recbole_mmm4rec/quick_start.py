"""RecBole's quick-start flow (Config, dataset, data_preparation, trainer) with plugin classes."""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
import time
from logging import Logger, getLogger
from typing import Any, Callable, Sequence

import torch

from recbole.config import Config
from recbole.data.dataset import Dataset
from recbole.data import data_preparation
from recbole.data.transform import construct_transform
from recbole.utils import (
    ModelType,
    calculate_valid_score,
    get_environment,
    get_flops,
    init_seed,
    set_color,
)

from recbole_mmm4rec import compat, registry, saved_data
from recbole_mmm4rec.config import PluginConfig
from recbole_mmm4rec.data.features import default_mode
from recbole_mmm4rec.data.recbole_datasets import plugin_dataset_class
from recbole_mmm4rec.data.sequence import WindowTrainDataLoader, train_mode
from recbole_mmm4rec.history import EpochCallback
from recbole_mmm4rec.model.transfer import TransferError, freeze_parameters, load_transferable
from recbole_mmm4rec.run_logging import init_run_logger
from recbole_mmm4rec.trainer import PluginTrainerMixin, plugin_trainer_class


def ensure_dataset_files(config: Config) -> None:
    """Build a dataset this package knows how to build when its folder is missing.

    RecBole would try to download any dataset it cannot find; here a missing folder is either
    built from installed data (``ml-100k-mm``) or reported with what to set.
    """
    if not config["benchmark_filename"]:
        ensure_dataset_folder(config["dataset"], config["data_path"])


def ensure_dataset_folder(name: str, dataset_dir: str) -> None:
    """Make sure ``dataset_dir`` holds dataset ``name``'s atomic files, building it if this
    package can (see :data:`recbole_mmm4rec.registry.DATASET_BUILDERS`)."""
    inter_file = os.path.join(dataset_dir, f"{name}.inter")
    if os.path.isfile(inter_file):
        return
    builder = registry.dataset_builder(name)
    if builder is None:
        if os.path.isdir(dataset_dir):
            return  # RecBole reports what is missing inside an existing folder
        raise FileNotFoundError(
            f"dataset {name!r} not found: no folder {dataset_dir}. Put its atomic "
            f"files ({name}.inter, ...) there or set data_path to their parent folder."
        )
    build_dataset_folder(name, dataset_dir, builder)


def build_dataset_folder(name: str, dataset_dir: str, builder: Callable[[str], Any]) -> None:
    """Run ``builder(folder)`` into a staging folder renamed to ``dataset_dir`` when complete."""
    inter_file = os.path.join(dataset_dir, f"{name}.inter")
    if os.path.isdir(dataset_dir) and os.listdir(dataset_dir):
        raise FileExistsError(
            f"{dataset_dir} exists but holds no {name}.inter. Remove or rename it to "
            f"let recbole-mmm4rec build {name} there; nothing in it was touched."
        )
    logger = getLogger()
    logger.info(set_color(f"Building {name} into {dataset_dir} (first use)", "pink"))
    parent = os.path.dirname(os.path.abspath(dataset_dir))
    os.makedirs(parent, exist_ok=True)
    # Build beside the target and rename, so a crash or a concurrent run never leaves a half
    # dataset, and an existing folder is never overwritten.
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{name}-building-")
    try:
        builder(staging)
        os.chmod(staging, default_mode(0o777))  # mkdtemp creates 0700
        os.rename(staging, dataset_dir)
    except OSError:
        if not os.path.isfile(inter_file):
            raise
        logger.info(f"{dataset_dir} was built by another process meanwhile; using it")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def recbole_dataset_class(config: Config) -> type:
    """The dataset class RecBole's ``create_dataset`` chooses for a built-in model."""
    module = importlib.import_module("recbole.data.dataset")
    by_model = getattr(module, f"{config['model']}Dataset", None)
    if by_model is not None:
        return by_model
    by_type = {
        ModelType.GENERAL: "Dataset",
        ModelType.SEQUENTIAL: "SequentialDataset",
        ModelType.CONTEXT: "Dataset",
        ModelType.KNOWLEDGE: "KnowledgeBasedDataset",
        ModelType.TRADITIONAL: "Dataset",
        ModelType.DECISIONTREE: "Dataset",
    }
    return getattr(module, by_type[config["MODEL_TYPE"]])


def create_dataset(config: Config) -> Dataset:
    """The dataset class of a plugin model, else RecBole's choice for the model; one of RecBole's
    classes is replaced by its plugin counterpart
    (:func:`~recbole_mmm4rec.data.recbole_datasets.plugin_dataset_class`), which checks the
    atomic files and keeps exact timestamps.

    Built-in models' datasets go through the same path as plugin models' (not RecBole's
    ``create_dataset``, which unpickles any saved file with plain pickle): a saved dataset is
    read restricted and reused only while its source files are unchanged
    (:func:`recbole_mmm4rec.saved_data.load_or_build_dataset`).
    """
    ensure_dataset_files(config)
    plugin = registry.get_plugin(config["model"])
    if plugin is None and config["modalities"]:
        getLogger().warning(
            f"{config['model']} is a RecBole built-in model: it trains on the interactions "
            f"only; modalities {config['modalities']} are not loaded (plugin models use them)"
        )
    dataset_class = plugin.dataset_class if plugin is not None else recbole_dataset_class(config)
    return saved_data.load_or_build_dataset(config, plugin_dataset_class(dataset_class))


def training_loader(config: Config, train_dataset, shuffle: bool):
    """RecBole's ``TrainDataLoader`` over ``train_dataset``; over a sequence-mode split of
    windows, :class:`~recbole_mmm4rec.data.sequence.WindowTrainDataLoader`, whose
    ``train_batch_size`` counts targets, as a prefix row is one."""
    from recbole.data.dataloader import TrainDataLoader

    loader_class = TrainDataLoader if getattr(train_dataset, "windows", None) is None else WindowTrainDataLoader
    return loader_class(config, train_dataset, None, shuffle=shuffle)


def prepare_data(config: Config, dataset: Dataset) -> tuple:
    """RecBole's ``data_preparation``, with a sequence-mode training split batched by
    :func:`training_loader`."""
    train_data, valid_data, test_data = data_preparation(config, dataset)
    if getattr(train_data._dataset, "windows", None) is not None:
        train_data = training_loader(config, train_data._dataset, shuffle=train_data.shuffle)
    return train_data, valid_data, test_data


def build_model_and_trainer(config: Config, train_data) -> tuple[torch.nn.Module, type]:
    """The seeded model on its device, and its
    :func:`~recbole_mmm4rec.trainer.plugin_trainer_class`."""
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    if train_mode(config) == "sequence" and not getattr(config.model_class, "SEQUENCE_TRAINING", False):
        raise ValueError(
            f"train_mode: sequence needs a model with a loss at every position of a window (MMM4Rec, "
            f"UniSRec); {config['model']} trains on prefix rows: set train_mode: prefix"
        )
    # The class the config resolved: a registered plugin, a RecBole model, or a class passed in.
    model = config.model_class(config, train_data._dataset).to(config["device"])
    return model, plugin_trainer_class(config)


def read_pretrained(checkpoint_file: str, trust: bool = False) -> tuple[str | None, dict]:
    """The saved model's class name (None for a bare state dict) and the weights of a RecBole
    checkpoint (``run_pretrain``, ``run_recbole``) or of a bare state dict. Raises
    :class:`TransferError` for anything else. ``trust`` as in
    :func:`recbole_mmm4rec.compat.load_checkpoint`.
    """
    checkpoint = compat.load_checkpoint(checkpoint_file, map_location="cpu", trust=trust)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        return (checkpoint["config"]["model"] if "config" in checkpoint else None), checkpoint["state_dict"]
    if isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return None, checkpoint
    raise TransferError(
        f"{checkpoint_file}: expected a RecBole checkpoint (a dict with 'state_dict') or a state "
        f"dict, found {type(checkpoint).__name__}"
    )


def load_pretrained(model: torch.nn.Module, checkpoint_file: str, trust: bool = False) -> str:
    """Load a checkpoint's transferable weights into ``model``; returns the key report.

    ``checkpoint_file`` is a RecBole checkpoint (``run_pretrain``, ``run_recbole``) of the same
    model class, or a bare state dict. Raises :class:`TransferError` for another model's
    checkpoint or mismatched shapes. ``trust`` as in :func:`recbole_mmm4rec.compat.load_checkpoint`.
    """
    saved_model, state_dict = read_pretrained(checkpoint_file, trust)
    if saved_model is not None and saved_model != type(model).__name__:
        raise TransferError(
            f"{checkpoint_file} is a checkpoint of {saved_model}, not of {type(model).__name__}; "
            f"pass a checkpoint saved by {type(model).__name__} (run_pretrain or run_recbole)"
        )
    return load_transferable(model, state_dict).summary()


def prepare_model(model: torch.nn.Module, config: Config) -> str | None:
    """Transferable weights from ``pretrained``, then ``freeze``, both logged; returns the key report."""
    logger = getLogger()
    report = None
    if config["pretrained"]:
        report = load_pretrained(model, config["pretrained"], trust=compat.trusts_files(config))
        logger.info(set_color("Transfer from", "pink") + f" {config['pretrained']}: " + report)
    prefixes = config["freeze"] or []
    if isinstance(prefixes, str):  # --freeze=adapters,primary_layers arrives as a string
        prefixes = [name.strip() for name in prefixes.strip("[]").split(",") if name.strip()]
    if prefixes:
        frozen = freeze_parameters(model, list(prefixes))
        logger.info(set_color("Frozen", "pink") + f" {len(frozen)} parameters (freeze: {list(prefixes)}): {frozen}")
    return report


def start_run(config: PluginConfig) -> Logger:
    """Seed, this run's log file, and the settings at the top of the log."""
    init_seed(config["seed"], config["reproducibility"])
    init_run_logger(config)
    logger = getLogger()
    logger.info(f"command line overrides: {config.cmd_args}")
    if config.stage_file:
        logger.info(f"stage defaults: {config.stage_file}")
    logger.info(config)
    return logger


def split_fingerprint(*splits) -> str:
    """Twelve hex digits naming the (user, item) tokens of each split's rows, in order.

    Equal fingerprints mean two runs trained, validated and tested on the same interactions,
    whatever the model's dataset class or internal ids.
    """
    digest = hashlib.sha1()
    for data in splits:
        dataset = data._dataset
        for field in (dataset.uid_field, dataset.iid_field):
            tokens = dataset.id2token(field, dataset.inter_feat[field].numpy())
            digest.update("\x1f".join(tokens.tolist()).encode("utf-8"))
        digest.update(b"\x1e")
    return digest.hexdigest()[:12]


def _last_evaluated_epoch(trainer) -> int:
    """The last epoch RecBole evaluated: it evaluates after epochs e with (e + 1) % eval_step == 0."""
    if trainer.eval_step == 0:  # RecBole's min(eval_step, epochs) with epochs: 0
        return -1
    last_trained = max(trainer.train_loss_dict, default=-1)
    return (last_trained + 1) // trainer.eval_step * trainer.eval_step - 1


def run_recbole(
    model: str | type | None = None,
    dataset: str | None = None,
    config_file_list: Sequence[str] | None = None,
    config_dict: dict | None = None,
    saved: bool = True,
    cmd_args: Sequence[str] = (),
    epoch_callback: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train and test a model, as ``recbole.quick_start.run_recbole`` does.

    Works for RecBole's built-in models and for plugin models. ``cmd_args`` are ``--key=value``
    overrides (the CLI passes its own); ``sys.argv`` is never read. ``epoch_callback`` is called
    with each epoch's record (see :class:`recbole_mmm4rec.history.EpochHistory`) as it ends.
    ``epochs: 0`` trains nothing (except RecBole's traditional models, Pop or ItemKNN, whose trainer
    always makes its one counting pass): with ``pretrained``, a zero-shot evaluation of the
    transferred weights on the validation and test splits. MMM4Rec's per-item tables start at
    zero, so its item vectors come from the features alone; UniSRec needs ``train_stage:
    inductive_ft`` (text only), as its ``transductive_ft`` ID embeddings would be untrained.

    Returns:
        ``model`` and ``dataset`` (the names the config resolved), ``best_valid_score``,
        ``valid_score_bigger``, ``best_valid_result``, ``test_result``,
        ``saved_model_file`` (the best checkpoint, when ``saved``), ``parameters`` (trainable),
        ``parameters_total``, ``split_fingerprint`` (see :func:`split_fingerprint`),
        ``epochs_trained``, ``best_epoch`` (0-based) and ``seconds_per_epoch`` (training and
        validation wall time per epoch), ``epoch_history`` (the per-epoch records) and
        ``epoch_history_file`` (their CSV beside the log; a JSON beside it too),
        ``transfer_report`` (which keys ``pretrained`` loaded and skipped, or None).
    """
    compat.import_recbole_models()
    config = PluginConfig(
        model=model,
        dataset=dataset,
        config_file_list=config_file_list,
        config_dict=config_dict,
        cmd_args=cmd_args,
    )
    logger = start_run(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = prepare_data(config, dataset)

    model, trainer_class = build_model_and_trainer(config, train_data)
    transfer_report = prepare_model(model, config)
    logger.info(model)
    transform = construct_transform(config)
    # One evaluation row: in sequence mode the dataset's own rows hold no histories.
    flops = get_flops(model, test_data._dataset, config["device"], logger, transform)
    logger.info(set_color("FLOPs", "blue") + f": {flops}")

    if issubclass(trainer_class, PluginTrainerMixin):
        trainer = trainer_class(config, model, epoch_callback=epoch_callback)
    else:  # decision trees: no epochs to report
        trainer = trainer_class(config, model)
    started = time.perf_counter()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    if config["epochs"] == 0:
        # Zero-shot: nothing trains; fit saved the model as built (pre-trained weights, item
        # vectors from the target's features), which validation and test both evaluate.
        if not config["pretrained"]:
            logger.warning("epochs: 0 without pretrained: evaluating the model's initial, untrained weights")
        best_valid_result = trainer.evaluate(valid_data, load_best_model=False, show_progress=config["show_progress"])
        best_valid_score = calculate_valid_score(best_valid_result, trainer.valid_metric)
    fit_seconds = time.perf_counter() - started
    epochs_trained = len(trainer.train_loss_dict)
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )

    logger.info(
        "The running environment of this training is as follows:\n"
        + get_environment(config).draw()
    )
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    history = getattr(trainer, "epoch_history", None)  # trainers without RecBole's epoch loop keep none
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parameters_total": sum(p.numel() for p in model.parameters()),
        "split_fingerprint": split_fingerprint(train_data, valid_data, test_data),
        "epochs_trained": epochs_trained,
        # RecBole's own rule: the best evaluation lies cur_step evaluations before the last one.
        "best_epoch": _last_evaluated_epoch(trainer) - trainer.cur_step * trainer.eval_step,
        "seconds_per_epoch": fit_seconds / max(epochs_trained, 1),
        "epoch_history": history.records if history else [],
        "epoch_history_file": history.csv_path if history else None,
        "transfer_report": transfer_report,
    }


def load_data_and_model(model_file: str, trust: bool = False) -> tuple:
    """Reload a checkpoint written by :func:`run_recbole` (or RecBole) with its data.

    Returns ``(config, model, dataset, train_data, valid_data, test_data)`` like RecBole's
    function. The checkpoint, and the saved dataset and dataloaders its config names
    (``dataset_save_path``, ``dataloaders_save_path``, ``checkpoint_dir``), are unpickled only if
    they reference RecBole's or our classes alone (see
    :func:`recbole_mmm4rec.compat.load_checkpoint`), unless ``trust=True``: the checkpoint's own
    ``trust_checkpoint`` is never followed.
    """
    compat.import_recbole_models()
    checkpoint = compat.load_checkpoint(model_file, map_location="cpu", trust=trust)
    is_recbole_checkpoint = (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("config"), Config)
        and isinstance(checkpoint.get("state_dict"), dict)
    )
    if not is_recbole_checkpoint:
        raise compat.UntrustedCheckpointError(
            f"{model_file}: expected a RecBole checkpoint (a dict with a Config under 'config' and a "
            f"'state_dict'), found a {type(checkpoint).__name__}"
        )
    config = checkpoint["config"]
    config["trust_checkpoint"] = trust
    # An unpickled Config skips __init__, which is where RecBole sets the numpy aliases
    # (np.float, ...) its metrics still use.
    config.compatibility_settings()
    init_seed(config["seed"], config["reproducibility"])
    init_run_logger(config)
    logger = getLogger()
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = prepare_data(config, dataset)

    model, _ = build_model_and_trainer(config, train_data)
    compat.restore_model_state(model, checkpoint)
    return config, model, dataset, train_data, valid_data, test_data
