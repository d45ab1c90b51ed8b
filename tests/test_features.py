"""MultiModalSequentialDataset and the feature file format, on the real ml-100k-mm subset."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from recbole_mmm4rec import PluginConfig
from recbole_mmm4rec.blocks import ItemFeatureTable
from recbole_mmm4rec.data import (
    FeatureFileError,
    MultiModalSequentialDataset,
    PluginDatasetMixin,
    PluginSequentialDataset,
    align_item_features,
    plugin_dataset_class,
    read_item_features,
    write_item_features,
)
from tests.conftest import SUBSET_NAME, subset_config_dict


def make_dataset(data_path, tmp_path, **overrides) -> MultiModalSequentialDataset:
    config = PluginConfig(
        model="SASRec",
        dataset=SUBSET_NAME,
        config_dict=subset_config_dict(data_path, tmp_path, **overrides),
    )
    return MultiModalSequentialDataset(config)


def original_features(data_path, modality):
    return read_item_features(f"{data_path}/{SUBSET_NAME}/{SUBSET_NAME}.{modality}.npy")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_modalities_given_as_one_string(subset_data_path, tmp_path):
    dataset = make_dataset(subset_data_path, tmp_path, modalities="kg")
    assert dataset.modalities == ["kg"] and dataset.item_feature_table("kg").shape[1] == 64


def test_rows_are_matched_by_token_not_by_order(subset_data_path, tmp_path):
    tokens, matrix = original_features(subset_data_path, "text")
    order = np.random.default_rng(0).permutation(len(tokens))
    shuffled = str(tmp_path / "shuffled.npy")
    write_item_features(shuffled, [tokens[i] for i in order], np.asarray(matrix)[order])

    dataset = make_dataset(subset_data_path, tmp_path, modality_files={"text": shuffled})
    table = dataset.item_feature_table("text")
    token_to_id = dataset.field2token_id[dataset.iid_field]
    assert table.shape == (dataset.item_num, 384) and table.dtype == torch.float32
    for token in ("1", "50", "181", "1682", tokens[order[0]]):
        np.testing.assert_array_equal(table[token_to_id[token]].numpy(), matrix[tokens.index(token)])
    assert torch.count_nonzero(table[0]) == 0  # padding
    assert bool(dataset.item_feature_mask("text")[1:].all())


def test_timestamp_list_is_exact_history_without_the_target(subset_data_path, tmp_path):
    dataset = make_dataset(subset_data_path, tmp_path)
    dataset.build()  # RecBole builds the sequences (and splits) here
    inter = dataset.inter_feat
    times, lengths = inter["timestamp_list"], inter["item_length"]
    assert times.dtype == torch.float64

    raw = pd.read_csv(f"{subset_data_path}/{SUBSET_NAME}/{SUBSET_NAME}.inter", sep="\t")
    user_tokens = dataset.field2id_token[dataset.uid_field]
    for row in np.random.default_rng(1).choice(len(inter), size=25, replace=False):
        user = int(user_tokens[inter["user_id"][row]])
        length = int(lengths[row])
        history = np.sort(raw.loc[raw["user_id:token"] == user, "timestamp:float"].to_numpy())
        target_time = float(inter["timestamp"][row])
        seen = times[row, :length].numpy()
        # The history and then the target are consecutive interactions of the user (ties in
        # time may come in either order), and no time from after the target is in the history.
        window = np.sort(np.append(seen, target_time))
        assert any(np.array_equal(history[k : k + length + 1], window) for k in range(len(history) - length))
        assert np.all(np.diff(seen) >= 0) and seen.max() <= target_time
        assert torch.count_nonzero(times[row, length:]) == 0


def test_recbole_sequential_models_get_the_same_split_as_plugin_models(subset_data_path, tmp_path):
    """RecBole's float32 timestamps would reorder interactions less than ~64 s apart (19 of the
    subset's 120 test rows differed); PluginSequentialDataset keeps exact times, as
    MultiModalSequentialDataset, so both datasets agree."""
    from recbole.data import data_preparation

    from recbole_mmm4rec.quick_start import create_dataset, split_fingerprint

    splits = {}
    for model in ("MMM4Rec", "SASRec"):
        config = PluginConfig(model=model, dataset=SUBSET_NAME, config_dict=subset_config_dict(subset_data_path, tmp_path))
        dataset = create_dataset(config)
        assert type(dataset).__name__ == {"MMM4Rec": "MultiModalSequentialDataset", "SASRec": "PluginSequentialDataset"}[model]
        train, valid, test = data_preparation(config, dataset)
        assert test._dataset.inter_feat["timestamp_list"].dtype == torch.float64
        splits[model] = [split_fingerprint(data) for data in (train, valid, test)]
    assert splits["MMM4Rec"] == splits["SASRec"]
    assert len(set(splits["SASRec"])) == 3


def test_every_recbole_dataset_class_has_a_named_plugin_counterpart():
    import recbole.data.dataset as recbole_datasets

    from recbole_mmm4rec.data import recbole_datasets as ours

    classes = {name: cls for name, cls in vars(recbole_datasets).items()
               if isinstance(cls, type) and issubclass(cls, recbole_datasets.Dataset)}
    assert {"Dataset", "SequentialDataset", "KnowledgeBasedDataset", "KSRDataset"} <= set(classes)
    for name, recbole_class in classes.items():
        plugin = plugin_dataset_class(recbole_class)
        # A module attribute under its own name: pickles of saved datasets find it.
        assert getattr(ours, f"Plugin{name}") is plugin and plugin.__bases__ == (PluginDatasetMixin, recbole_class)
    assert plugin_dataset_class(MultiModalSequentialDataset) is MultiModalSequentialDataset
    assert issubclass(MultiModalSequentialDataset, PluginSequentialDataset)


def test_missing_feature_policies(subset_data_path, tmp_path):
    tokens, matrix = original_features(subset_data_path, "kg")
    by_policy = {
        policy: make_dataset(subset_data_path, tmp_path, missing_feature_policy=policy, modalities=["kg"])
        for policy in ("zero", "mean", "learned")
    }
    mask = by_policy["zero"].item_feature_mask("kg")
    missing = torch.nonzero(~mask[1:]).ravel() + 1
    assert len(missing) == by_policy["zero"].item_num - 1 - len(tokens)  # every kg row is used
    assert torch.count_nonzero(by_policy["zero"].item_feature_table("kg")[missing]) == 0
    mean = by_policy["mean"].item_feature_table("kg")
    np.testing.assert_allclose(mean[missing[0]].numpy(), np.asarray(matrix).mean(axis=0), rtol=1e-5, atol=1e-6)

    table = ItemFeatureTable.from_dataset(by_policy["learned"], "kg")
    with torch.no_grad():
        table.missing_embedding.fill_(3.0)
    looked_up = table(torch.tensor([0, int(missing[0]), int(torch.nonzero(mask)[0])]))
    assert torch.count_nonzero(looked_up[0]) == 0
    assert torch.all(looked_up[1] == 3.0)
    assert not torch.any(looked_up[2] == 3.0)
    table(missing).sum().backward()
    assert table.missing_embedding.grad is not None and table.missing_embedding.grad.abs().sum() > 0
    assert "table" not in table.state_dict()  # features never travel in checkpoints

    with pytest.raises(FeatureFileError, match=rf"{len(missing)} of \d+ items have no feature row, e\.g\. tokens"):
        make_dataset(subset_data_path, tmp_path, missing_feature_policy="error", modalities=["kg"])


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda t, m: (t, m[:, :100]), "expected feature dimension 384 .modality_dims., found 100"),
        (lambda t, m: (t, np.where(np.arange(len(t))[:, None] == 7, np.nan, m)), r"1 rows hold NaN .* rows 7 .*tokens '8'"),
        (lambda t, m: (t[:-1] + ["no-such-movie"], m), r"1 of 1682 row tokens are not items.*'no-such-movie'"),
        (lambda t, m: (t[:-1] + [t[0]], m), r"token\(s\) name more than one row, e\.g\. '1'"),
        (lambda t, m: (t[:5] + [""] + t[6:], m), r"bad\.tokens: empty token on line\(s\) 6"),
        (lambda t, m: (t, m.astype(np.int32)), "expected float values, found dtype int32"),
        (lambda t, m: (t, m[None]), r"expected a 2-D \(rows, dim\) array, found shape \(1, 1682, 384\)"),
    ],
    ids=["dimension", "nan", "unknown-token", "duplicate-token", "empty-token", "int-dtype", "not-2d"],
)
def test_bad_feature_files_name_the_file_and_the_expectation(subset_data_path, tmp_path, corrupt, message):
    tokens, matrix = original_features(subset_data_path, "text")
    bad_tokens, bad_matrix = corrupt(list(tokens), np.asarray(matrix))
    path = tmp_path / "bad.npy"
    np.save(path, bad_matrix)
    (tmp_path / "bad.tokens").write_text("".join(t + "\n" for t in bad_tokens))
    with pytest.raises(FeatureFileError, match=message) as error:
        make_dataset(subset_data_path, tmp_path, modality_files={"text": str(path)}, modalities=["text"], modality_dims={"text": 384})
    assert "bad." in str(error.value)


def test_row_count_mismatch_and_missing_files(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 4), dtype=np.float32))
    (tmp_path / "x.tokens").write_text("a\nb\nc\n\n")
    with pytest.raises(FeatureFileError, match=r"x\.tokens: line 4 is an empty token \(a blank line at the end\?\)"):
        read_item_features(str(tmp_path / "x.npy"))
    (tmp_path / "x.tokens").write_text("a\nb\n")
    with pytest.raises(FeatureFileError, match=r"x\.tokens: expected 3 tokens, one per row of .*x\.npy, found 2"):
        read_item_features(str(tmp_path / "x.npy"))
    with pytest.raises(FeatureFileError, match=r"missing feature matrix \(\.npy\) file .*nothing\.npy"):
        read_item_features(str(tmp_path / "nothing.npy"))
    (tmp_path / "y.npy").write_bytes((tmp_path / "x.npy").read_bytes())
    with pytest.raises(FeatureFileError, match=r"missing row tokens file .*y\.tokens"):
        read_item_features(str(tmp_path / "y.npy"))


def test_missing_default_file_is_reported_with_its_path(subset_data_path, tmp_path):
    with pytest.raises(FeatureFileError, match=rf"missing feature matrix .*{SUBSET_NAME}\.image\.npy"):
        make_dataset(subset_data_path, tmp_path, modalities=["image"])


def test_unknown_tokens_can_be_ignored_on_request(subset_data_path, tmp_path):
    tokens, matrix = original_features(subset_data_path, "text")
    path = str(tmp_path / "bigger.npy")
    write_item_features(path, list(tokens) + ["other-catalogue-item"], np.vstack([matrix, np.ones((1, 384))]))
    dataset = make_dataset(
        subset_data_path, tmp_path, modality_files={"text": path}, modalities=["text"], unknown_feature_tokens="ignore"
    )
    assert dataset.item_feature_table("text").shape == (dataset.item_num, 384)


def test_rows_of_filtered_out_items_are_not_unknown(subset_data_path, tmp_path):
    # Items with fewer than 5 interactions are filtered away; their rows are simply unused.
    dataset = make_dataset(subset_data_path, tmp_path, item_inter_num_interval="[5,inf)", modalities=["text"])
    assert dataset.item_num - 1 < 1682
    assert bool(dataset.item_feature_mask("text")[1:].all())


def test_memory_mapped_tables_equal_in_memory_ones_and_share_one_file(subset_data_path, tmp_path, monkeypatch):
    monkeypatch.setattr("recbole_mmm4rec.data.features.ALIGN_ROWS_PER_BLOCK", 100)  # several blocks
    in_memory = make_dataset(subset_data_path, tmp_path / "a", modalities=["text", "kg"])
    mapped = [make_dataset(subset_data_path, tmp_path / "b", modalities=["text", "kg"], memory_map_features=True) for _ in range(2)]
    for modality in ("text", "kg"):  # kg fills 86 movies with the mean of the others
        for dataset in mapped:
            torch.testing.assert_close(dataset.item_feature_table(modality), in_memory.item_feature_table(modality))
    folder = tmp_path / "b" / "saved" / "features"
    files = sorted(os.listdir(folder))  # the second dataset mapped the first one's files
    assert len(files) == 2 and all(name.endswith(".npy") for name in files)  # no temporary left
    (text_file,) = [name for name in files if ".text." in name]
    on_disk = np.load(folder / text_file)
    np.testing.assert_array_equal(on_disk, mapped[0].item_feature_table("text").numpy())
    # Copy-on-write: a write through one process's view never reaches the file or the others.
    first, second = (d.item_feature_table("text") for d in mapped)
    first[1, 0] += 1.0
    assert second[1, 0] == on_disk[1, 0] == np.load(folder / text_file)[1, 0] != first[1, 0]


def test_align_rejects_bad_policy_and_padding_rows():
    token_to_id = {"[PAD]": 0, "a": 1, "b": 2}
    matrix = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(FeatureFileError, match=r"missing_feature_policy for f\.npy: expected one of .* found 'drop'"):
        align_item_features(["a", "b"], matrix, token_to_id, {"a", "b"}, "drop", "f.npy")
    with pytest.raises(FeatureFileError, match=r"padding token \[PAD\] cannot have a feature row"):
        align_item_features(["a", "[PAD]"], matrix, token_to_id, {"a", "[PAD]"}, "zero", "f.npy")


def test_write_is_atomic_and_keeps_the_old_file_on_failure(tmp_path):
    path = str(tmp_path / "f.npy")
    write_item_features(path, ["a\x85b", "c\u2028d"], np.eye(2, dtype=np.float32))  # odd but legal tokens
    for bad_tokens, bad_matrix in ((["a"], np.eye(2)), (["a", "b"], np.eye(2, dtype=np.int64))):
        with pytest.raises(FeatureFileError):
            write_item_features(path, bad_tokens, bad_matrix)
    tokens, matrix = read_item_features(path)
    assert tokens == ["a\x85b", "c\u2028d"] and np.array_equal(matrix, np.eye(2))
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy", "f.tokens"]


def test_saved_dataset_is_reused_only_while_its_arguments_match(subset_data_path, tmp_path, tiny_plugin, monkeypatch):
    import shutil

    from recbole_mmm4rec import create_dataset
    features = tmp_path / "copy.text.npy"
    shutil.copyfile(f"{subset_data_path}/{SUBSET_NAME}/{SUBSET_NAME}.text.npy", features)
    shutil.copyfile(f"{subset_data_path}/{SUBSET_NAME}/{SUBSET_NAME}.text.tokens", tmp_path / "copy.text.tokens")

    def config(**overrides):
        return PluginConfig(
            model="MeanFeatureRec", dataset=SUBSET_NAME,
            config_dict=subset_config_dict(
                subset_data_path, tmp_path, save_dataset=True, modalities=["text"],
                modality_files={"text": str(features)}, **overrides,
            ),
        )

    class ReadAgain(Exception):
        pass

    def read_again(*args, **kwargs):
        raise ReadAgain

    first = create_dataset(config())
    (saved,) = (tmp_path / "saved").iterdir()
    assert saved.name == f"{SUBSET_NAME}-MultiModalSequentialDataset.pth"
    # from now on only a reused dataset can have text features (a changed file: tests/test_untrusted_files.py)
    monkeypatch.setattr("recbole_mmm4rec.data.dataset.read_item_features", read_again)
    reused = create_dataset(config())
    assert torch.equal(reused.item_feature_table("text"), first.item_feature_table("text"))
    with pytest.raises(ReadAgain):
        create_dataset(config(missing_feature_policy="zero"))  # a changed key means rebuild


def test_block_writer_streams_rows_and_keeps_the_old_file_on_a_bad_block(tmp_path):
    from recbole_mmm4rec.data import write_item_feature_blocks

    path = str(tmp_path / "f.npy")
    blocks = [np.full((2, 3), 1.0), np.full((1, 3), 2.0)]
    write_item_feature_blocks(path, ["a", "b", "c"], iter(blocks), 3)
    tokens, matrix = read_item_features(path)
    assert tokens == ["a", "b", "c"] and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, np.vstack(blocks))
    for bad_blocks, message in (
        ([np.ones((2, 4))], r"blocks of shape \(rows, 3\) .* got a block of shape \(2, 4\) at row 0"),
        ([np.ones((2, 3)), np.ones((2, 3))], r"got a block of shape \(2, 3\) at row 2"),
        ([np.ones((2, 3))], r"expected 3 rows, got 2"),
    ):
        with pytest.raises(FeatureFileError, match=message):
            write_item_feature_blocks(path, ["x", "y", "z"], bad_blocks, 3)
    assert read_item_features(path)[0] == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy", "f.tokens"]
