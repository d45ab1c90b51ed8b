"""An interrupted pre-training run resumes where it stood: the same batches, dropout masks and
losses as an uninterrupted run; a truncated latest checkpoint gives way to the one before it."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

from recbole_mmm4rec.data.features import write_item_features
from recbole_mmm4rec.pretrain import run_pretrain
from tests.conftest import SMALL_MMM4REC

NAME = "resume-tiny"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    """40 users with 8 interactions each over 15 items, 8-d text features."""
    root = tmp_path_factory.mktemp("resume")
    folder = root / NAME
    folder.mkdir()
    rng = np.random.default_rng(0)
    lines = [f"u{u}\ti{rng.integers(15)}\t{1000 + 60 * k + u}" for u in range(40) for k in range(8)]
    (folder / f"{NAME}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(lines) + "\n")
    write_item_features(str(folder / f"{NAME}.text.npy"), [f"i{i}" for i in range(15)], rng.random((15, 8)))
    return str(root)


def _settings(root: str, saved: str) -> dict:
    return {
        **SMALL_MMM4REC, "dropout_prob": 0.3, "time_dropout_prob": 0.3,  # draws from torch's generator
        "data_path": root, "checkpoint_dir": saved, "load_col": None, "modalities": ["text"],
        "modality_streams": ["text"], "MAX_ITEM_LIST_LENGTH": 5, "train_batch_size": 32, "accumulation_steps": 2,
        "epochs": 3, "show_progress": False, "use_gpu": False,
    }


def _interrupt_after(epoch: int):
    def callback(record):
        if record["epoch"] == epoch:
            raise KeyboardInterrupt  # after the epoch's checkpoint, as a kill would
    return callback


def test_a_resumed_run_has_the_uninterrupted_losses_and_survives_a_truncated_checkpoint(data_root, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # RecBole's log/ folders
    whole = run_pretrain("MMM4Rec", [NAME], config_dict=_settings(data_root, str(tmp_path / "whole")))["train_loss"]
    assert len(set(whole.values())) == 3

    saved = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_pretrain("MMM4Rec", [NAME], config_dict=_settings(data_root, str(saved)), epoch_callback=_interrupt_after(1))
    shutil.copytree(saved, tmp_path / "intact")

    resumed = run_pretrain("MMM4Rec", [NAME], config_dict=_settings(data_root, str(tmp_path / "intact")))
    assert resumed["resumed_from"].endswith("-2.pth") and list(resumed["train_loss"]) == [2]
    assert resumed["train_loss"][2] == pytest.approx(whole[2], abs=1e-6)

    latest = next(str(saved / name) for name in os.listdir(saved) if name.endswith("-2.pth"))
    with open(latest, "r+b") as f:
        f.truncate(os.path.getsize(latest) // 2)
    with caplog.at_level(logging.WARNING):
        fallen_back = run_pretrain("MMM4Rec", [NAME], config_dict=_settings(data_root, str(saved)))
    assert f"{latest}: not a readable checkpoint" in caplog.text and "Resuming from the checkpoint before it" in caplog.text
    assert fallen_back["resumed_from"].endswith("-1.pth") and list(fallen_back["train_loss"]) == [1, 2]
    for epoch in (1, 2):
        assert fallen_back["train_loss"][epoch] == pytest.approx(whole[epoch], abs=1e-6)
