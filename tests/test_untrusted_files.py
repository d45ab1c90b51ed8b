"""Every pickle the package or RecBole reads on its behalf goes through the restricted loader:
checkpoints, the saved dataset and dataloader files their config names, saved datasets and saved
dataloaders of every run; saved datasets are rebuilt when their source files change; a damaged
file only ever raises the package's error."""
from __future__ import annotations

import builtins
import io
import logging
import os
import pickle
import random
import shutil
import zipfile

import numpy as np
import pytest
import torch
from recbole.data import data_preparation

from recbole_mmm4rec import PluginConfig, compat, create_dataset, load_data_and_model, run_recbole
from recbole_mmm4rec.data import FeatureFileError, write_item_features
from recbole_mmm4rec.pretrain import run_pretrain
from tests.conftest import SUBSET_NAME, subset_config_dict

# SASRec at a size that trains one epoch in about a second.
SMALL_SASREC = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1}


class _OpenMarker:
    """Unpickling creates ``marker`` through ``builtins.open``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


class _SystemMarker(_OpenMarker):
    """Unpickling creates ``marker`` through ``os.system``."""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker, payload=_OpenMarker) -> str:
    """A plain pickle at ``path`` (RecBole's format for saved datasets and dataloaders) whose
    loading creates ``marker``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(payload(marker), f)
    return str(path)


def assert_refused(error_info, path, marker) -> None:
    message = str(error_info.value)
    assert str(path) in message and "trust" in message, message
    assert not os.path.exists(marker), f"{path} ran its code"


def sasrec_config(data_path: str, tmp_path, **overrides) -> PluginConfig:
    return PluginConfig(model="SASRec", dataset=SUBSET_NAME, config_dict=subset_config_dict(data_path, tmp_path, **SMALL_SASREC, **overrides))


def tiny_config(data_path: str, tmp_path, **overrides) -> PluginConfig:
    """The tiny plugin model on the text features only (the cheapest multimodal dataset)."""
    return PluginConfig(
        model="MeanFeatureRec", dataset=SUBSET_NAME,
        config_dict=subset_config_dict(data_path, tmp_path, modalities=["text"], **overrides),
    )


@pytest.fixture(scope="module")
def sasrec_checkpoint(subset_data_path, tmp_path_factory) -> str:
    """A real checkpoint: one epoch of a small SASRec."""
    tmp_path = tmp_path_factory.mktemp("sasrec")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)  # RecBole writes log/ and log_tensorboard/ into the working folder
        result = run_recbole(
            model="SASRec", dataset=SUBSET_NAME, config_dict=subset_config_dict(subset_data_path, tmp_path, **SMALL_SASREC)
        )
    return result["saved_model_file"]


def test_the_planted_pickles_really_run_code_when_trusted(tmp_path):
    """Guards every test below: the planted files are working exploits."""
    for payload in (_OpenMarker, _SystemMarker):
        marker = tmp_path / f"{payload.__name__}-ran"
        compat.load_checkpoint(plant(tmp_path / f"{payload.__name__}.pth", marker, payload), trust=True)
        assert marker.exists()


@pytest.mark.parametrize("key", ["dataset_save_path", "dataloaders_save_path"])
def test_a_path_in_a_checkpoints_config_is_read_restricted(sasrec_checkpoint, tmp_path, monkeypatch, key):
    """The checkpoint passes the allow-list; the file its config names would run code."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    checkpoint = torch.load(sasrec_checkpoint, weights_only=False)
    checkpoint["config"][key] = plant(tmp_path / "elsewhere" / "data.pth", marker, _SystemMarker)
    checkpoint["config"]["trust_checkpoint"] = True  # a checkpoint never opts itself out
    torch.save(checkpoint, tmp_path / "edited.pth")
    with pytest.raises(compat.UntrustedCheckpointError) as error:
        load_data_and_model(str(tmp_path / "edited.pth"))
    assert_refused(error, tmp_path / "elsewhere" / "data.pth", marker)


def test_a_checkpoint_that_is_no_recbole_checkpoint_is_refused_by_name(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(compat.UntrustedCheckpointError, match="weights.pth: expected a RecBole checkpoint"):
        load_data_and_model(str(path))


@pytest.mark.parametrize(
    "command, model",
    [("run_recbole", "SASRec"), ("run_recbole", "MeanFeatureRec"), ("run_pretrain", "MeanFeatureRec")],
)
def test_a_planted_default_saved_dataset_is_refused(subset_data_path, tmp_path, monkeypatch, tiny_plugin, command, model):
    """Without save_dataset too: RecBole reads the default file whenever it exists."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    dataset_class = "PluginSequentialDataset" if model == "SASRec" else "MultiModalSequentialDataset"
    planted = plant(tmp_path / "saved" / f"{SUBSET_NAME}-{dataset_class}.pth", marker)
    settings = subset_config_dict(subset_data_path, tmp_path, **(SMALL_SASREC if model == "SASRec" else {"modalities": ["text"]}))
    with pytest.raises(compat.UntrustedCheckpointError) as error:
        if command == "run_recbole":
            run_recbole(model=model, dataset=SUBSET_NAME, config_dict=settings)
        else:
            run_pretrain(model, [SUBSET_NAME], config_dict=settings)
    assert_refused(error, planted, marker)


def test_trust_checkpoint_opts_out(subset_data_path, tmp_path):
    """The opt-out (``--trust_checkpoint=True``) unpickles without restriction; what it loaded is
    no dataset, so the dataset is built again."""
    marker = tmp_path / "ran"
    plant(tmp_path / "saved" / f"{SUBSET_NAME}-PluginSequentialDataset.pth", marker)
    config = PluginConfig(
        model="SASRec", dataset=SUBSET_NAME,
        config_dict=subset_config_dict(subset_data_path, tmp_path), cmd_args=["--trust_checkpoint=True"],
    )
    assert type(create_dataset(config)).__name__ == "PluginSequentialDataset"
    assert marker.exists()


@pytest.mark.parametrize("named", [False, True], ids=["default file", "dataloaders_save_path"])
def test_a_planted_saved_dataloader_is_refused(subset_data_path, tmp_path, named):
    """RecBole's own data_preparation reads saved dataloaders through the restricted loader."""
    marker = tmp_path / "pwned"
    planted = plant(tmp_path / ("other" if named else "saved") / f"{SUBSET_NAME}-for-SASRec-dataloader.pth", marker)
    config = sasrec_config(subset_data_path, tmp_path, save_dataloaders=True, dataloaders_save_path=planted if named else None)
    dataset = create_dataset(config)
    with pytest.raises(compat.UntrustedCheckpointError) as error:
        data_preparation(config, dataset)
    assert_refused(error, planted, marker)


def test_saved_dataset_and_dataloaders_are_reused_by_a_second_run(subset_data_path, tmp_path, monkeypatch):
    """SASRec: the second run trains on the saved files, with the same shuffles."""
    monkeypatch.chdir(tmp_path)
    settings = subset_config_dict(subset_data_path, tmp_path, **SMALL_SASREC, save_dataset=True, save_dataloaders=True)
    first = run_recbole(model="SASRec", dataset=SUBSET_NAME, config_dict=settings)
    saved = sorted(os.listdir(tmp_path / "saved"))
    assert f"{SUBSET_NAME}-PluginSequentialDataset.pth" in saved and f"{SUBSET_NAME}-for-SASRec-dataloader.pth" in saved

    def refuse_to_build(*args, **kwargs):
        raise AssertionError("the dataset was built again")

    monkeypatch.setattr("recbole.data.dataset.SequentialDataset.__init__", refuse_to_build)
    monkeypatch.setattr("recbole.data.dataset.SequentialDataset.build", refuse_to_build)
    second = run_recbole(model="SASRec", dataset=SUBSET_NAME, config_dict=settings)
    assert second["split_fingerprint"] == first["split_fingerprint"]
    assert second["test_result"] == first["test_result"]


def copy_dataset(subset_data_path: str, tmp_path) -> str:
    """A data_path holding a copy of the subset, whose files a test may change."""
    shutil.copytree(os.path.join(subset_data_path, SUBSET_NAME), tmp_path / "data" / SUBSET_NAME)
    return str(tmp_path / "data")


def test_a_plugin_dataset_is_reused_until_a_feature_file_changes(subset_data_path, tmp_path, tiny_plugin, caplog):
    caplog.set_level(logging.INFO)
    data_path = copy_dataset(subset_data_path, tmp_path)
    first = create_dataset(tiny_config(data_path, tmp_path, save_dataset=True))
    assert os.listdir(tmp_path / "saved") == [f"{SUBSET_NAME}-MultiModalSequentialDataset.pth"]
    reused = create_dataset(tiny_config(data_path, tmp_path, save_dataset=True))
    assert torch.equal(reused.item_feature_table("text"), first.item_feature_table("text"))
    assert any("Load filtered dataset from" in r.getMessage() for r in caplog.records)

    # The text features replaced by another encoder's: 8-d, with NaN (which the reader refuses).
    features = os.path.join(data_path, SUBSET_NAME, f"{SUBSET_NAME}.text.npy")
    tokens = [line.rstrip("\n") for line in open(features.replace(".npy", ".tokens"), encoding="utf-8")]
    np.save(features, np.full((len(tokens), 8), np.nan, dtype=np.float32))
    caplog.clear()
    with pytest.raises(FeatureFileError, match="hold NaN or infinite values"):
        create_dataset(tiny_config(data_path, tmp_path, save_dataset=True))
    (warning,) = [r for r in caplog.records if "not reusing the saved dataset" in r.getMessage()]
    assert warning.levelno == logging.WARNING and f"{features} changed" in warning.getMessage()

    write_item_features(features, tokens, np.ones((len(tokens), 8), dtype=np.float32))
    rebuilt = create_dataset(tiny_config(data_path, tmp_path, save_dataset=True))
    assert rebuilt.item_feature_table("text").shape[1] == 8
    assert create_dataset(tiny_config(data_path, tmp_path, save_dataset=True)).item_feature_table("text").shape[1] == 8


def test_a_builtin_dataset_is_rebuilt_when_its_atomic_file_changes(subset_data_path, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data_path = copy_dataset(subset_data_path, tmp_path)
    inter = os.path.join(data_path, SUBSET_NAME, f"{SUBSET_NAME}.inter")
    first = create_dataset(sasrec_config(data_path, tmp_path, save_dataset=True))
    with open(inter, encoding="utf-8") as f:
        lines = f.readlines()
    with open(inter, "w", encoding="utf-8") as f:
        f.writelines(lines[:-500])
    rebuilt = create_dataset(sasrec_config(data_path, tmp_path, save_dataset=True))
    assert rebuilt.inter_num == first.inter_num - 500
    assert any(f"{inter} changed" in r.getMessage() for r in caplog.records)


def test_a_dataset_saved_by_recbole_itself_is_rebuilt(subset_data_path, tmp_path, caplog):
    """RecBole's own save records no source files: such a file is never trusted to be current."""
    caplog.set_level(logging.INFO)
    config = sasrec_config(subset_data_path, tmp_path)
    dataset = create_dataset(config)
    dataset.save()  # RecBole's Dataset.save
    create_dataset(config)
    assert any("holds no record of the files it was built from" in r.getMessage() for r in caplog.records)


def test_saved_dataloaders_are_rebuilt_when_a_source_file_changes(subset_data_path, tmp_path, tiny_plugin, caplog):
    caplog.set_level(logging.INFO)
    data_path = copy_dataset(subset_data_path, tmp_path)
    config = tiny_config(data_path, tmp_path, save_dataloaders=True)
    data_preparation(config, create_dataset(config))
    assert os.listdir(tmp_path / "saved") == [f"{SUBSET_NAME}-for-MeanFeatureRec-dataloader.pth"]
    config = tiny_config(data_path, tmp_path, save_dataloaders=True)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    assert any("Load split dataloaders from" in r.getMessage() for r in caplog.records)
    assert train_data.generator is not None

    features = os.path.join(data_path, SUBSET_NAME, f"{SUBSET_NAME}.text.npy")
    tokens = [line.rstrip("\n") for line in open(features.replace(".npy", ".tokens"), encoding="utf-8")]
    write_item_features(features, tokens, np.ones((len(tokens), 8), dtype=np.float32))
    config = tiny_config(data_path, tmp_path, save_dataloaders=True)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    assert any("not reusing the saved dataloaders" in r.getMessage() and features in r.getMessage() for r in caplog.records)
    assert train_data._dataset.item_feature_table("text").shape[1] == 8


class _Reduce:
    """Pickles as ``func(*args)``, then BUILD with ``state`` when given."""

    def __init__(self, func, args, state=None):
        self.value = (func, args) if state is None else (func, args, state)

    def __reduce__(self):
        return self.value


def test_getattr_only_reaches_public_methods_of_unpickled_instances(tmp_path):
    """RecBole's dataloaders pickle their collate_fn as getattr(loader, 'collate_fn'); getattr is
    no way to reach a class's, a module's or a private attribute."""
    from recbole.config import Config

    layer = torch.nn.Linear(1, 1)
    for number, (obj, name) in enumerate(((Config, "__init__"), (layer, "_apply"), (layer, "weight"), ({}, "get"))):
        path = tmp_path / f"getattr-{number}.pth"
        path.write_bytes(pickle.dumps(_Reduce(getattr, (obj, name))))
        with pytest.raises(compat.UntrustedCheckpointError, match=f"reads attribute '{name}' of a .*, which is not allowed"):
            compat.load_checkpoint(path)


def test_a_numpy_dtype_state_numpy_never_writes_is_refused(tmp_path):
    """Found by the fuzz test below: a flipped flag in a dtype's state (here "use getitem")
    segfaulted numpy when the next scalar was built."""
    good = _Reduce(np.dtype, ("U3", False, True), (3, "<", None, None, None, 12, 4, 8))
    bad = _Reduce(np.dtype, ("U3", False, True), (3, "<", None, None, None, 12, 4, 40))
    path = tmp_path / "dtype.pth"
    path.write_bytes(pickle.dumps([good, np.str_("abc")]))
    assert compat.load_checkpoint(path) == [np.dtype("<U3"), "abc"]
    path.write_bytes(pickle.dumps([bad, np.str_("abc")]))
    with pytest.raises(compat.UntrustedCheckpointError, match="state numpy never writes"):
        compat.load_checkpoint(path)


# --- damaged files: only ever the package's error -------------------------------------------


def _expect_only_our_error(path) -> None:
    try:
        compat.load_checkpoint(path)
    except compat.UntrustedCheckpointError as error:
        assert str(path) in str(error)


def _rezip_with_pickle(original: bytes, mutate) -> bytes:
    """The checkpoint with its ``data.pkl`` replaced by ``mutate(data.pkl)``: valid zip, CRCs and
    all, so torch hands the damaged pickle to the unpickler."""
    source, out = zipfile.ZipFile(io.BytesIO(original)), io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, mutate(data) if info.filename.endswith("/data.pkl") else data)
    return out.getvalue()


def _flip(data: bytes, rng: random.Random, count: int) -> bytes:
    mutable = bytearray(data)
    for _ in range(count):
        mutable[rng.randrange(len(mutable))] ^= 1 << rng.randrange(8)
    return bytes(mutable)


def test_damaged_files_only_raise_the_packages_error(sasrec_checkpoint, subset_data_path, tmp_path):
    rng = random.Random(19)
    checkpoint = open(sasrec_checkpoint, "rb").read()
    config = sasrec_config(subset_data_path, tmp_path, save_dataset=True)
    create_dataset(config)
    dataset = (tmp_path / "saved" / f"{SUBSET_NAME}-PluginSequentialDataset.pth").read_bytes()
    cases = [b"", b"\x80", rng.randbytes(64), rng.randbytes(4096)]
    cases += [checkpoint[: rng.randrange(len(checkpoint))] for _ in range(20)]
    cases += [dataset[: rng.randrange(len(dataset))] for _ in range(20)]
    # flipped bits: anywhere in the file, and in the zip's headers and directory at its ends
    cases += [_flip(checkpoint, rng, rng.randint(1, 8)) for _ in range(20)]
    cases += [checkpoint[:-2048] + _flip(checkpoint[-2048:], rng, 2) for _ in range(20)]
    cases += [_flip(checkpoint[:2048], rng, 2) + checkpoint[2048:] for _ in range(20)]
    # a fuzzed pickle inside an intact zip, and fuzzed plain pickles (saved datasets)
    cases += [_rezip_with_pickle(checkpoint, lambda data: _flip(data, rng, rng.randint(1, 4))) for _ in range(60)]
    cases += [_rezip_with_pickle(checkpoint, lambda data: data[: rng.randrange(len(data))]) for _ in range(20)]
    cases += [_flip(dataset, rng, rng.randint(1, 4)) for _ in range(60)]
    for number, data in enumerate(cases):
        path = tmp_path / f"damaged-{number}.pth"
        path.write_bytes(data)
        _expect_only_our_error(path)
        path.unlink()
