"""Per-epoch records of every run: CSV and JSON beside the log, and the epoch callback."""
from __future__ import annotations

import csv
import glob
import json
import os

import pytest

from recbole_mmm4rec import run_recbole
from recbole_mmm4rec.history import EpochHistory
from tests.conftest import SUBSET_NAME, subset_config_dict


def test_records_are_rewritten_whole_after_each_epoch(tmp_path):
    history = EpochHistory(str(tmp_path / "run"))
    history.add({"epoch": 0, "train_loss": 2.5, "train_seconds": 1.0, "elapsed_seconds": 1.0})
    history.add({"epoch": 1, "train_loss": 2.0, "train_seconds": 1.0, "valid_ndcg@10": 0.1, "elapsed_seconds": 2.5})
    with open(history.csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert rows[0]["valid_ndcg@10"] == "" and rows[1]["valid_ndcg@10"] == "0.1"
    with open(history.json_path) as f:
        assert json.load(f) == history.records
    assert sorted(os.listdir(tmp_path)) == ["run.epochs.csv", "run.epochs.json"]  # no temporary left


def test_every_epoch_recorded_beside_the_log_with_and_without_validation(
    subset_data_path, tmp_path, monkeypatch, tiny_plugin
):
    monkeypatch.chdir(tmp_path)
    seen = []
    result = run_recbole(
        model="MeanFeatureRec",
        dataset=SUBSET_NAME,
        config_dict=subset_config_dict(subset_data_path, tmp_path, epochs=3, eval_step=2),
        epoch_callback=seen.append,
    )
    records = result["epoch_history"]
    # eval_step 2: RecBole validates after epoch 1 only (0-based); every epoch still has a record.
    assert [r["epoch"] for r in records] == [0, 1, 2] and seen == records
    assert "valid_ndcg@10" not in records[0] and "valid_ndcg@10" not in records[2]
    assert records[1]["valid_ndcg@10"] == pytest.approx(records[1]["valid_score"])
    assert all(r["train_loss"] > 0 and r["train_seconds"] > 0 for r in records)
    assert [r["elapsed_seconds"] for r in records] == sorted(r["elapsed_seconds"] for r in records)

    (log_file,) = glob.glob(str(tmp_path / "log" / "MeanFeatureRec" / "*.log"))
    assert result["epoch_history_file"] == log_file[: -len(".log")] + ".epochs.csv"
    with open(result["epoch_history_file"]) as f:
        assert len(list(csv.DictReader(f))) == 3
    with open(log_file[: -len(".log")] + ".epochs.json") as f:
        assert json.load(f) == records


def test_each_run_in_one_process_logs_to_its_own_file(subset_data_path, tmp_path, monkeypatch, tiny_plugin):
    monkeypatch.chdir(tmp_path)
    files = []
    for seed in (1, 2):  # the seed changes RecBole's config hash, hence the log file name
        config = subset_config_dict(subset_data_path, tmp_path, seed=seed)
        files.append(run_recbole(model="MeanFeatureRec", dataset=SUBSET_NAME, config_dict=config)["epoch_history_file"])
    logs = sorted(glob.glob(str(tmp_path / "log" / "MeanFeatureRec" / "*.log")))
    assert len(logs) == 2 and sorted(f[: -len(".epochs.csv")] + ".log" for f in files) == logs
    for log in logs:
        with open(log) as f:
            assert f.read().count("test result") == 1
