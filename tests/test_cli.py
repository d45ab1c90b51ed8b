"""The run_recbole command line and Python API, end to end on a small real subset."""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

import recbole_mmm4rec
from recbole_mmm4rec import load_data_and_model, run_recbole
from recbole_mmm4rec.cli import build_parser
from recbole_mmm4rec.trainer import plugin_trainer_class
from tests.conftest import SUBSET_NAME, subset_config_dict

RUN_RECBOLE = os.path.join(os.path.dirname(sys.executable), "run_recbole")


def parse_table(stdout: str, title: str) -> dict[str, float]:
    block = stdout.split(title, 1)[1].split("\n\n", 1)[0]
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+@\d+)\s+([0-9.]+)$", block, re.M)}


def reloaded_trainer(checkpoint: str):
    config, model, _, _, _, test_data = load_data_and_model(checkpoint)
    trainer = plugin_trainer_class(config)(config, model)
    return trainer, test_data


def evaluate_reloaded(checkpoint: str) -> dict[str, float]:
    trainer, test_data = reloaded_trainer(checkpoint)
    return dict(trainer.evaluate(test_data, load_best_model=False))


def test_help_lists_flags_plugins_and_datasets():
    out = subprocess.run([RUN_RECBOLE, "--help"], capture_output=True, text=True, check=True).stdout
    for text in ("--model", "--dataset", "--config_files", "--nproc", "plugin models:", "ml-100k-mm"):
        assert text in out


def test_sasrec_one_epoch_through_the_cli_then_reload(subset_data_path, tmp_path, monkeypatch):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(subset_config_dict(subset_data_path, tmp_path)))
    result = subprocess.run(
        [RUN_RECBOLE, "--model=SASRec", f"--dataset={SUBSET_NAME}", f"--config_files={config_file}", "--hidden_size=32"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = parse_table(result.stdout, f"SASRec on {SUBSET_NAME}: test")
    assert set(printed) == {"hit@10", "ndcg@10"} and 0 < printed["ndcg@10"] <= printed["hit@10"] <= 1
    assert glob.glob(str(tmp_path / "log" / "SASRec" / "*.log"))
    assert glob.glob(str(tmp_path / "log_tensorboard" / "*"))
    (checkpoint,) = glob.glob(str(tmp_path / "saved" / "SASRec-*.pth"))

    monkeypatch.chdir(tmp_path)
    reloaded = evaluate_reloaded(checkpoint)
    for metric, value in printed.items():
        assert reloaded[metric] == pytest.approx(value, abs=1e-4)


def test_registered_plugin_model_trains_and_reloads(subset_data_path, tmp_path, monkeypatch, tiny_plugin):
    monkeypatch.chdir(tmp_path)
    assert "MeanFeatureRec" in recbole_mmm4rec.plugin_models()
    assert "MeanFeatureRec" in build_parser().format_help()

    result = run_recbole(
        model="MeanFeatureRec", dataset=SUBSET_NAME, config_dict=subset_config_dict(subset_data_path, tmp_path, epochs=2)
    )
    assert result["saved_model_file"] and os.path.isfile(result["saved_model_file"])
    assert result["test_result"]["hit@10"] > 0
    trainer, test_data = reloaded_trainer(result["saved_model_file"])
    assert dict(trainer.evaluate(test_data, load_best_model=False)) == pytest.approx(dict(result["test_result"]), abs=1e-6)
    trained = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for parameter in trainer.model.parameters():
        parameter.data.zero_()
    trainer.resume_checkpoint(result["saved_model_file"])
    assert trainer.start_epoch >= 1
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in trained.items())


def test_cpu_multi_process_flags_are_refused_clearly():
    out = subprocess.run([RUN_RECBOLE, "--model=SASRec", "--nproc=2"], capture_output=True, text=True)
    assert out.returncode != 0 and "multi-process training" in out.stderr


def test_missing_dataset_is_not_downloaded(tmp_path):
    out = subprocess.run(
        [RUN_RECBOLE, "--model=SASRec", "--dataset=ml-1m", f"--data_path={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert out.returncode != 0 and "dataset 'ml-1m' not found: no folder" in out.stderr
