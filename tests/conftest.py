"""Shared fixtures: the real ml-100k-mm, built once, and a small real subset of it."""
from __future__ import annotations

import contextlib
import os
import shutil

import pandas as pd
import pytest
import torch

from recbole_mmm4rec.dataset_scripts.ml100k_mm import build_ml100k_mm

SUBSET_NAME = "ml-100k-mm-small"
SUBSET_USERS = 120  # users 1..120 of ml-100k: ~13 k real interactions


@pytest.fixture(scope="session")
def ml100k_mm_dir(tmp_path_factory) -> str:
    """The folder ``.../ml-100k-mm`` built by the real builder (MiniLM + knowledge graph)."""
    folder = str(tmp_path_factory.mktemp("data") / "ml-100k-mm")
    build_ml100k_mm(folder)
    return folder


@pytest.fixture(scope="session")
def subset_data_path(ml100k_mm_dir, tmp_path_factory) -> str:
    """A data_path holding ``ml-100k-mm-small``: the first users' real interactions, all items,
    and the real feature files of ml-100k-mm."""
    root = tmp_path_factory.mktemp("subset")
    folder = root / SUBSET_NAME
    folder.mkdir()
    inter = pd.read_csv(os.path.join(ml100k_mm_dir, "ml-100k-mm.inter"), sep="\t", dtype=str)
    inter = inter[inter["user_id:token"].astype(int) <= SUBSET_USERS]
    inter.to_csv(folder / f"{SUBSET_NAME}.inter", sep="\t", index=False)
    for suffix in ("item", "text.npy", "text.tokens", "kg.npy", "kg.tokens"):
        shutil.copyfile(
            os.path.join(ml100k_mm_dir, f"ml-100k-mm.{suffix}"), folder / f"{SUBSET_NAME}.{suffix}"
        )
    return str(root)


# MMM4Rec small but complete: 4 heads of 16 in 2 groups, several SSD chunks per sequence.
SMALL_MMM4REC = {
    "hidden_size": 32,
    "inner_size": 64,
    "head_dim": 16,
    "d_state": 8,
    "n_groups": 2,
    "chunk_size": 8,
    "dropout_prob": 0.0,
    "time_dropout_prob": 0.0,
}


def subset_config_dict(data_path: str, tmp_path, **overrides) -> dict:
    """A CPU-sized config for the subset; every artefact goes under ``tmp_path``."""
    config = {
        "data_path": data_path,
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"], "item": ["item_id"]},
        "modalities": ["text", "kg"],
        "missing_feature_policy": {"text": "error", "kg": "mean"},
        "MAX_ITEM_LIST_LENGTH": 20,
        "epochs": 1,
        "train_batch_size": 512,
        "eval_batch_size": 4096,
        "show_progress": False,
        "use_gpu": False,
        "checkpoint_dir": str(tmp_path / "saved"),
        "metrics": ["Hit", "NDCG"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        # RecBole's prefix rows, whatever a model's default: most tests read training rows;
        # tests/test_sequence_training.py tests sequence mode.
        "train_mode": "prefix",
    }
    config.update(overrides)
    return config


def subset_config(model: str, data_path: str, tmp_path, **overrides):
    """A plugin model's :class:`PluginConfig` on the subset (:func:`subset_config_dict`)."""
    from recbole_mmm4rec import PluginConfig

    return PluginConfig(model=model, dataset=SUBSET_NAME, config_dict=subset_config_dict(data_path, tmp_path, **overrides))


def prepare(config) -> tuple:
    """(config, dataset, train_data) for ``config``."""
    from recbole.data import data_preparation

    from recbole_mmm4rec import create_dataset

    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    return config, dataset, train_data


@contextlib.contextmanager
def config_overrides(config, **overrides):
    """``config`` with keys overridden inside the ``with`` block, restored after it (a shared,
    module-scoped config serves one model or trainer with other settings)."""
    saved = {key: config[key] for key in overrides}
    for key, value in overrides.items():
        config[key] = value
    try:
        yield config
    finally:
        for key, value in saved.items():
            config[key] = value


def model_with_overrides(model_class: type, prepared: tuple, seed: int = 0, **overrides):
    """A fresh seeded ``model_class`` on ``prepared``'s dataset, with config keys overridden for
    this model only (``prepared`` as returned by :func:`prepare`)."""
    config, _, train_data = prepared
    with config_overrides(config, **overrides):
        torch.manual_seed(seed)
        return model_class(config, train_data._dataset)


def training_rows(prepared: tuple, n: int = 64):
    """The first ``n`` rows of the first training batch: real histories, both full-length (20)
    and shorter than 10."""
    _, _, train_data = prepared
    interaction = next(iter(train_data))[torch.arange(n)]
    lengths = interaction["item_length"]
    assert (lengths == 20).any() and (lengths < 10).any()
    return interaction


@pytest.fixture
def tiny_plugin():
    """MeanFeatureRec registered as a plugin model for one test, then unregistered."""
    from recbole_mmm4rec import registry
    from tests.tiny_model import CONFIG_FILE, MeanFeatureRec

    registry.register_model(MeanFeatureRec, config_file=CONFIG_FILE)
    yield MeanFeatureRec
    registry._MODELS.pop(MeanFeatureRec.__name__)
