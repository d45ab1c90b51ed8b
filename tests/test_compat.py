"""The narrow RecBole fixes: anomaly mode, checkpoint loading, sys.argv, CE sampling default."""
from __future__ import annotations

import pathlib
import pickle
import subprocess
import sys

import pytest
import torch

from recbole_mmm4rec import PluginConfig, compat
from tests.conftest import SUBSET_NAME, subset_config_dict


def test_importing_recbole_models_leaves_anomaly_detection_off():
    code = (
        "import torch, recbole_mmm4rec\n"
        "import recbole.model.sequential_recommender.sine\n"
        "from recbole.utils import get_model; get_model('SINE')\n"
        "print(torch.is_anomaly_enabled())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_import_recbole_models_keeps_a_mode_the_caller_chose():
    torch.autograd.set_detect_anomaly(True)
    try:
        compat.import_recbole_models()
        assert torch.is_anomaly_enabled()
    finally:
        torch.autograd.set_detect_anomaly(False)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("protocol", [2, 4])
def test_foreign_checkpoint_is_refused_without_running_it(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": _Exploit(str(marker))}, path, pickle_protocol=protocol)
    # protocol 4 names pathlib.Path.touch; protocol 2 reaches it through getattr(pathlib.Path, ...)
    assert any(name.startswith("pathlib.") for name in compat.untrusted_globals(path))
    with pytest.raises(compat.UntrustedCheckpointError, match=r"evil\.pth is not a RecBole .*pathlib\."):
        compat.load_checkpoint(path)
    assert not marker.exists()
    # A plain, non-zip pickle file is scanned the same way.
    legacy = tmp_path / "legacy.pkl"
    legacy.write_bytes(pickle.dumps(_Exploit(str(marker)), protocol=protocol))
    with pytest.raises(compat.UntrustedCheckpointError):
        compat.load_checkpoint(legacy)
    assert not marker.exists()


def test_recbole_functions_are_not_trusted_only_classes(tmp_path):
    from recbole.utils import init_seed

    path = tmp_path / "f.pth"
    torch.save({"f": init_seed}, path)
    assert compat.untrusted_globals(path) == ["recbole.utils.utils.init_seed"]


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(compat.UntrustedCheckpointError, match="garbage.pth: not a readable torch checkpoint"):
        compat.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compat.load_checkpoint(tmp_path / "absent.pth")


def test_library_config_never_reads_sys_argv(subset_data_path, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["my_script.py", "--learning_rate=0.5", "--epochs=99"])
    config = PluginConfig(model="SASRec", dataset=SUBSET_NAME, config_dict=subset_config_dict(subset_data_path, tmp_path))
    assert config["learning_rate"] == 0.001 and config["epochs"] == 1
    config = PluginConfig(
        model="SASRec",
        dataset=SUBSET_NAME,
        config_dict=subset_config_dict(subset_data_path, tmp_path),
        cmd_args=["--learning_rate=0.5", "--note=a=b"],
    )
    assert config["learning_rate"] == 0.5 and config["note"] == "a=b"


def test_ce_sequential_models_default_to_no_training_negatives(subset_data_path, tmp_path):
    base = subset_config_dict(subset_data_path, tmp_path)
    sasrec = PluginConfig(model="SASRec", dataset=SUBSET_NAME, config_dict=base)
    assert sasrec["train_neg_sample_args"]["distribution"] == "none"
    bpr = PluginConfig(model="GRU4Rec", dataset=SUBSET_NAME, config_dict={**base, "loss_type": "BPR"})
    assert bpr["train_neg_sample_args"]["distribution"] == "uniform"
    with pytest.raises(ValueError, match="should be None when the loss_type is CE"):
        PluginConfig(
            model="SASRec",
            dataset=SUBSET_NAME,
            config_dict={**base, "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}},
        )


def test_packaged_dataset_yaml_is_layered_by_name(tmp_path):
    config = PluginConfig(model="SASRec", dataset="ml-100k-mm", config_dict={"data_path": str(tmp_path)})
    assert config["modalities"] == ["text", "kg"]
    assert config["modality_dims"] == {"text": 384, "kg": 64}
    assert "timestamp" in config["load_col"]["inter"]


def test_unknown_model_lists_what_exists():
    with pytest.raises(ValueError, match=r"unknown model 'NoSuchRec': not a RecBole built-in model nor a plugin model"):
        PluginConfig(model="NoSuchRec", dataset="ml-100k-mm")
