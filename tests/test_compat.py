"""The narrow RecBole fixes: anomaly mode, checkpoint loading, sys.argv, CE sampling default; importing
the package leaves RecBole's dataset classes alone."""
from __future__ import annotations

import pathlib
import pickle
import subprocess
import sys

import pytest
import torch

from recbole_mmm4rec import PluginConfig, compat
from tests.conftest import SUBSET_NAME, subset_config_dict


def _last_line_printed(code: str) -> str:
    """The last line ``code`` prints in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_importing_recbole_models_leaves_anomaly_detection_off():
    code = (
        "import torch, recbole_mmm4rec\n"
        "import recbole.model.sequential_recommender.sine\n"
        "from recbole.utils import get_model; get_model('SINE')\n"
        "print(torch.is_anomaly_enabled())\n"
    )
    assert _last_line_printed(code) == "False"


def test_importing_the_package_leaves_recboles_dataset_classes_as_they_are():
    """The atomic-file checks and exact timestamps live in subclasses, not in RecBole's classes."""
    code = (
        "from recbole.data.dataset import Dataset, SequentialDataset\n"
        "methods = {(cls, name): cls.__dict__.get(name) for cls in (Dataset, SequentialDataset)\n"
        "           for name in ('_load_feat', 'build', '_dataframe_to_interaction')}\n"
        "import recbole_mmm4rec\n"
        "print([f'{cls.__name__}.{name}' for (cls, name), method in methods.items() if cls.__dict__.get(name) is not method])\n"
    )
    assert _last_line_printed(code) == "[]"


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


class _EvalThroughConfig:
    """Only trusted globals, but calls RecBole's Config, whose __init__ evals its dict values."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from recbole.config import Config

        payload = f"__import__('pathlib').Path({self.marker!r}).touch()"
        return (Config, (None, None, None, {"learning_rate": payload}))


def _short_string(text: str) -> bytes:
    data = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def _stack_trick(marker: str) -> bytes:
    """Pushes 'pathlib', 'Path' then a decoy 'collections', 'OrderedDict', pops the decoy, so
    STACK_GLOBAL resolves pathlib.Path; then pathlib.Path(marker).touch() via getattr."""
    return (
        pickle.PROTO + bytes([4])
        + _short_string("builtins") + _short_string("getattr") + pickle.STACK_GLOBAL
        + _short_string("pathlib") + _short_string("Path")
        + _short_string("collections") + _short_string("OrderedDict") + pickle.POP + pickle.POP
        + pickle.STACK_GLOBAL + _short_string(marker) + pickle.TUPLE1 + pickle.REDUCE
        + _short_string("touch") + pickle.TUPLE2 + pickle.REDUCE
        + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP
    )


def _attack_files(tmp_path, marker):
    zip2, zip4 = tmp_path / "reduce2.pth", tmp_path / "reduce4.pth"
    torch.save({"state_dict": {}, "x": _Exploit(marker)}, zip2, pickle_protocol=2)
    torch.save({"state_dict": {}, "x": _Exploit(marker)}, zip4, pickle_protocol=4)
    config_eval = tmp_path / "config_eval.pth"
    torch.save({"config": _EvalThroughConfig(marker)}, config_eval, pickle_protocol=4)
    stack_trick = tmp_path / "stack_trick.pth"
    stack_trick.write_bytes(_stack_trick(marker))
    # A legacy (non-zip) torch file is several pickles in a row; the second one attacks.
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2) + pickle.dumps(_Exploit(marker), protocol=2))
    return [zip2, zip4, config_eval, stack_trick, legacy]


def test_attacks_are_refused_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"
    for path in _attack_files(tmp_path, str(marker)):
        with pytest.raises(compat.UntrustedCheckpointError, match=rf"{path.name} is not a RecBole / recbole_mmm4rec checkpoint"):
            compat.load_checkpoint(path)
        assert not marker.exists(), path.name


def test_modules_outside_the_allow_lists_are_never_imported(tmp_path, monkeypatch):
    module_file = tmp_path / "side_effect_module.py"
    module_file.write_text(f"import pathlib\npathlib.Path({str(tmp_path / 'imported')!r}).touch()\nclass Thing: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "import.pth"
    path.write_bytes(
        pickle.PROTO + bytes([4]) + _short_string("side_effect_module") + _short_string("Thing")
        + pickle.STACK_GLOBAL + pickle.STOP
    )
    with pytest.raises(compat.UntrustedCheckpointError, match="references side_effect_module.Thing"):
        compat.load_checkpoint(path)
    assert not (tmp_path / "imported").exists()


def test_the_stack_trick_really_runs_code_when_trusted(tmp_path):
    """Guards the attack test above: the crafted pickle is a working exploit."""
    marker = tmp_path / "pwned"
    (tmp_path / "f.pkl").write_bytes(_stack_trick(str(marker)))
    pickle.loads((tmp_path / "f.pkl").read_bytes())
    assert marker.exists()


def test_trust_true_unpickles_without_restriction(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "mine.pth"
    torch.save({"x": _Exploit(str(marker))}, path)
    compat.load_checkpoint(path, trust=True)
    assert marker.exists()


def test_recbole_functions_and_re_exports_are_refused(tmp_path):
    from recbole.trainer.hyper_tuning import partial  # functools.partial, re-exported by RecBole
    from recbole.utils import init_seed

    for name, value in (("function", init_seed), ("re-export", partial(print, "x"))):
        path = tmp_path / f"{name}.pth"
        torch.save({"f": value}, path)
        with pytest.raises(compat.UntrustedCheckpointError):
            compat.load_checkpoint(path)


def test_what_recbole_models_keep_in_other_parameter_loads(tmp_path):
    import numpy as np
    import scipy.sparse as sp
    from recbole.utils import ModelType

    state = {
        "config": {"model": "ItemKNN", "MODEL_TYPE": ModelType.GENERAL, "device": torch.device("cpu")},
        "state_dict": {"w": torch.arange(6.0).reshape(2, 3)},
        "other_parameter": {
            "w": sp.random(5, 5, density=0.3, format="csr", random_state=0),  # ItemKNN, EASE
            "pred_mat": np.arange(4.0),
            "feature_embed_layer": torch.nn.Embedding(3, 2),  # FDSA, DIN
        },
    }
    path = tmp_path / "ok.pth"
    torch.save(state, path, pickle_protocol=4)
    loaded = compat.load_checkpoint(path)
    assert (loaded["other_parameter"]["w"] != state["other_parameter"]["w"]).nnz == 0
    assert torch.equal(loaded["other_parameter"]["feature_embed_layer"].weight, state["other_parameter"]["feature_embed_layer"].weight)
    assert loaded["config"]["MODEL_TYPE"] is ModelType.GENERAL


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(compat.UntrustedCheckpointError, match="garbage.pth: not a readable checkpoint"):
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
