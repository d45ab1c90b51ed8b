"""Broken or careless inputs: every one a clear error naming the file, line or key and what to
fix, never a silent change of data. Tiny synthetic datasets, no training."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from recbole_mmm4rec import PluginConfig, create_dataset
from recbole_mmm4rec.compat import UntrustedCheckpointError, load_checkpoint
from recbole_mmm4rec.config import ConfigError, convert_values
from recbole_mmm4rec.data.atomic_checks import AtomicFileError
from recbole_mmm4rec.data.features import FeatureFileError, write_item_features

HEADER = "user_id:token\titem_id:token\ttimestamp:float"


def _lines(users: int = 6, per_user: int = 5) -> list[str]:
    return [f"u{u}\ti{(u + k) % 7}\t{1000 + 10 * k + u}" for u in range(users) for k in range(per_user)]


def _dataset(root, name: str, lines: list[str], header: str | None = HEADER, features: bool = False) -> str:
    folder = root / name
    folder.mkdir()
    (folder / f"{name}.inter").write_text("" if header is None else header + "\n" + "".join(line + "\n" for line in lines))
    if features:
        tokens = sorted({line.split("\t")[1] for line in lines})
        write_item_features(str(folder / f"{name}.text.npy"), tokens, np.random.default_rng(0).random((len(tokens), 4)))
    return str(folder)


def _load(root, name: str, model: str = "SASRec", cmd_args=(), **settings):
    config = PluginConfig(
        model=model, dataset=name, cmd_args=list(cmd_args),
        config_dict={"data_path": str(root), "checkpoint_dir": str(root / "saved"), "use_gpu": False,
                     "show_progress": False, "load_col": None, **settings},
    )
    dataset = create_dataset(config)
    return dataset, dataset.build()


# --- atomic files -------------------------------------------------------------------------------

def test_a_blank_timestamp_is_an_error_not_the_mean(tmp_path):
    lines = _lines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t"
    _dataset(tmp_path, "blank", lines)
    with pytest.raises(AtomicFileError, match=r"blank\.inter: 1 line\(s\): 5 have no 'timestamp' value.*mean"):
        _load(tmp_path, "blank")


def test_a_row_with_extra_fields_is_an_error(tmp_path):
    lines = _lines()
    lines[7] += "\tEXTRA"
    lines[9] += '\t"quoted\tfield"\tmore'
    _dataset(tmp_path, "extra", lines)
    with pytest.raises(AtomicFileError, match=r"extra\.inter: 2 line\(s\): 9, 11 hold more fields than the 3 columns"):
        _load(tmp_path, "extra")


def test_a_quoted_separator_is_no_extra_field(tmp_path):
    lines = [f'{line}\t"a\tb"' for line in _lines()]
    _dataset(tmp_path, "quoted", lines, header=HEADER + "\tnote:token")
    dataset, _ = _load(tmp_path, "quoted")
    assert dataset.field2id_token["note"][1] == "a\tb"


@pytest.mark.parametrize("value", ["1e300", "-inf"])
def test_floats_beyond_float32_are_an_error_not_inf(tmp_path, value):
    lines = [line + "\t1.5" for line in _lines()]
    lines[4] = lines[4].rsplit("\t", 1)[0] + f"\t{value}"
    _dataset(tmp_path, "big", lines, header=HEADER + "\tprice:float")
    with pytest.raises(AtomicFileError, match=r"big\.inter: column 'price' holds values beyond float32's range .* 1 line\(s\): 6"):
        _load(tmp_path, "big")


def test_exact_timestamps_beyond_float32_are_kept(tmp_path):
    # The time field of a sequential dataset stays float64 (PluginDatasetMixin)
    lines = [f"u{u}\ti{k}\t{1e300 * (k + 1)}" for u in range(3) for k in range(4)]
    _dataset(tmp_path, "bigtime", lines)
    dataset, _ = _load(tmp_path, "bigtime")
    assert torch.isfinite(dataset.inter_feat["timestamp"]).all()


@pytest.mark.parametrize(
    "header, lines, message",
    [
        (None, [], r"empty\.inter: the file is empty; expected a header line of name:type columns"),
        (HEADER, [], r"empty\.inter: holds no interactions"),
        ("user_id:token\titem_id\ttimestamp:float", ["u\ti\t1"], r"header column\(s\) \['item_id'\] are not name:type"),
        ("user_id:token\ttimestamp:float", ["u0\t1", "u0\t2"], r"no column 'item_id' \(ITEM_ID_FIELD\) was loaded; found columns \['user_id', 'timestamp'\]"),
        ("user_id:token\titem_id:token", ["u0\ti0", "u0\ti1"], r"no column 'timestamp' \(TIME_FIELD\) was loaded"),
    ],
    ids=["zero-bytes", "header-only", "bad-header", "no-item-id", "no-timestamp"],
)
def test_unusable_interaction_files_name_the_file_and_the_fix(tmp_path, header, lines, message):
    _dataset(tmp_path, "empty", lines, header=header)
    with pytest.raises(AtomicFileError, match=message):
        _load(tmp_path, "empty")


def test_every_user_with_one_interaction_is_an_error(tmp_path):
    _dataset(tmp_path, "single", [f"u{u}\ti{u}\t{1000 + u}" for u in range(10)])
    with pytest.raises(AtomicFileError, match=r"dataset single: no training sample .*10 interactions of 10 users, at most 1 per user"):
        _load(tmp_path, "single")


# --- feature files ------------------------------------------------------------------------------

def _break(path: str, how: str) -> None:
    if how == "zero-bytes":
        open(path, "wb").close()
    else:
        data = bytearray(open(path, "rb").read())
        data[10:40] = b"x" * 30  # inside the header dict
        open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("how", ["zero-bytes", "corrupt-header"])
def test_a_broken_npy_names_the_file(tmp_path, how):
    folder = _dataset(tmp_path, "npy", _lines(), features=True)
    _break(os.path.join(folder, "npy.text.npy"), how)
    with pytest.raises(FeatureFileError, match=r"npy\.text\.npy: not a readable \.npy array"):
        _load(tmp_path, "npy", model="MMM4Rec", modalities=["text"])


def test_a_non_utf8_tokens_file_names_the_file_and_line(tmp_path):
    folder = _dataset(tmp_path, "tok", _lines(), features=True)
    path = os.path.join(folder, "tok.text.tokens")
    lines = open(path, "rb").read().split(b"\n")
    lines[2] = b"\xff\xfebad"
    open(path, "wb").write(b"\n".join(lines))
    with pytest.raises(FeatureFileError, match=r"tok\.text\.tokens: line 3 is not UTF-8 text"):
        _load(tmp_path, "tok", model="MMM4Rec", modalities=["text"])


def test_features_covering_no_item_are_an_error(tmp_path):
    folder = _dataset(tmp_path, "cover", _lines())
    write_item_features(os.path.join(folder, "cover.text.npy"), ["x1", "x2"], np.ones((2, 4), np.float32))
    with pytest.raises(FeatureFileError, match=r"cover\.text\.tokens: none of the dataset's 7 items has a feature row"):
        _load(tmp_path, "cover", model="MMM4Rec", modalities=["text"], missing_feature_policy="zero",
              unknown_feature_tokens="ignore")


# --- checkpoints ---------------------------------------------------------------------------------

def test_random_bytes_and_a_fuzzed_zip_are_the_packages_error(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "random.pth").write_bytes(rng.bytes(5000))
    torch.save({"state_dict": {"w": torch.ones(3)}}, tmp_path / "zip.pth")
    data = bytearray((tmp_path / "zip.pth").read_bytes())
    data[200:260] = rng.bytes(60)
    (tmp_path / "zip.pth").write_bytes(bytes(data))
    for name in ("random.pth", "zip.pth"):
        with pytest.raises(UntrustedCheckpointError, match=rf"{name}: not a readable checkpoint"):
            load_checkpoint(tmp_path / name)


# --- settings ------------------------------------------------------------------------------------

def _config(cmd_args=(), **settings):
    return PluginConfig(model="MMM4Rec", dataset="nowhere", cmd_args=list(cmd_args), config_dict=settings)


def test_a_misspelt_key_warns_with_the_closest_key(caplog):
    with caplog.at_level(logging.WARNING):
        config = _config(["--hiden_size=64"])
    assert config["hidden_size"] == 256
    assert "--hiden_size: no key of RecBole, recbole-mmm4rec or any model, so not used (did you mean 'hidden_size'?)" in caplog.text
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        _config(["--hidden_size=64", "--epochs=2", "--modalities=[text]", "--fusion=static"], train_stage="pretrain")
        # another model's key: one config file often serves several models (the demo's)
        PluginConfig(model="SASRec", dataset="nowhere", config_dict={"n_groups": 2, "n_experts": 4})
    assert "no key of" not in caplog.text


def test_strict_config_makes_a_misspelt_key_an_error():
    with pytest.raises(ConfigError, match=r"strict_config.*learnig_rate \(config dict\): no key of.*'learning_rate'"):
        _config(strict_config=True, learnig_rate=0.1)


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--hidden_size=abc", r"--hidden_size: expected a number \(default 256\), found 'abc'"),
        ("--use_item_id=maybe", r"--use_item_id: expected True or False, found 'maybe'"),
        ("--MAX_ITEM_LIST_LENGTH=0", r"--MAX_ITEM_LIST_LENGTH: expected a whole number of at least 1, found 0"),
        ("--train_batch_size=2.5", r"--train_batch_size: expected a whole number of at least 1, found 2.5"),
    ],
)
def test_impossible_values_name_the_key(arg, message):
    with pytest.raises(ConfigError, match=message):
        _config([arg])


def test_a_list_of_bare_names_is_a_list():
    assert convert_values({"modalities": "[text,nope]", "topk": "[10, 20]", "freeze": "[ adapters , layers.0 ]"}) == {
        "modalities": ["text", "nope"], "topk": [10, 20], "freeze": ["adapters", "layers.0"]}
    assert _config(["--modalities=[text,image]"])["modalities"] == ["text", "image"]


def test_modality_names_given_as_one_string_are_split(tmp_path):
    _dataset(tmp_path, "mods", _lines(), features=True)
    with pytest.raises(FeatureFileError, match=r"missing feature matrix \(\.npy\) file .*mods\.nope\.npy"):
        _load(tmp_path, "mods", model="MMM4Rec", cmd_args=["--modalities=text,nope"])


def test_the_command_line_prints_the_error_without_a_traceback(tmp_path, monkeypatch):
    from recbole_mmm4rec.cli import run_recbole_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^run_recbole: --hidden_size: expected a number \(default 256\), found 'abc'$"):
        run_recbole_main(["--model=MMM4Rec", "--dataset=nowhere", "--hidden_size=abc"])
