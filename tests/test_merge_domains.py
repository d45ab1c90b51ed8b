"""merge_domains: namespaced tokens, a domain column, features concatenated, RecBole reads the result."""
from __future__ import annotations

import numpy as np
import pytest

from recbole_mmm4rec import PluginConfig
from recbole_mmm4rec.data import MultiModalSequentialDataset, read_item_features, write_item_features
from recbole_mmm4rec.dataset_scripts import merge_domains as merge
from recbole_mmm4rec.dataset_scripts.amazon2018 import AMAZON_2018
from recbole_mmm4rec.dataset_scripts.amazon2023 import AMAZON_2023
from recbole_mmm4rec.dataset_scripts.amazon_common import build_dataset
from recbole_mmm4rec.dataset_scripts.atomic_files import read_atomic_header, read_atomic_rows
from tests.amazon_fixtures import write_raw_2018, write_raw_2023


def _domain(tmp_path, name, release, write_raw, dims):
    raw = tmp_path / f"raw-{name}"
    raw.mkdir()
    folder = tmp_path / name
    build_dataset(release, *write_raw(raw), name, str(folder), kcore=2)
    items = [row[0] for row in read_atomic_rows(str(folder / f"{name}.item"))]
    rng = np.random.default_rng(len(name))
    for modality, dim in dims.items():
        write_item_features(str(folder / f"{name}.{modality}.npy"), items, rng.normal(size=(len(items), dim)).astype(np.float32))
    return str(folder)


@pytest.fixture
def domains(tmp_path):
    return [
        _domain(tmp_path, "Food", AMAZON_2018, write_raw_2018, {"text": 8, "image": 5}),
        _domain(tmp_path, "Home", AMAZON_2023, write_raw_2023, {"text": 8, "image": 5}),
    ]


def test_merged_files_are_namespaced_concatenations(domains, tmp_path, monkeypatch):
    monkeypatch.setattr(merge, "ROWS_PER_BLOCK", 3)  # several blocks per domain
    out = tmp_path / "merged"
    stats = merge.merge_domains(domains, "FH", str(out), ["text", "image"])

    assert read_atomic_header(str(out / "FH.inter")) == [
        "user_id:token", "item_id:token", "rating:float", "timestamp:float", "domain:token"]
    merged = list(read_atomic_rows(str(out / "FH.inter")))
    expected = []
    for folder in domains:
        domain = folder.rsplit("/", 1)[1]
        for user, item, rating, time in read_atomic_rows(f"{folder}/{domain}.inter"):
            expected.append([f"{domain}:{user}", f"{domain}:{item}", rating, time, domain])
    assert merged == expected
    assert {row[0] for row in merged if row[4] == "Food"}.isdisjoint({row[0] for row in merged if row[4] == "Home"})
    assert merged[0][:2] == ["Food:AUSER00001", "Food:B000000001"]

    items = list(read_atomic_rows(str(out / "FH.item")))
    assert len(items) == 8 and items[4][0] == "Home:B000000001" and items[4][-1] == "Home"
    assert items[0][1] == "Lab & Bench Beaker"

    for modality in ("text", "image"):
        tokens, matrix = read_item_features(str(out / f"FH.{modality}.npy"))
        parts = [read_item_features(f"{f}/{f.rsplit('/', 1)[1]}.{modality}.npy") for f in domains]
        assert tokens == [f"Food:{t}" for t in parts[0][0]] + [f"Home:{t}" for t in parts[1][0]]
        np.testing.assert_array_equal(matrix, np.vstack([parts[0][1], parts[1][1]]))

    assert stats["domains"] == {"Food": {"users": 3, "items": 4, "interactions": 8},
                                "Home": {"users": 3, "items": 4, "interactions": 8}}
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 8, 16)
    assert stats["feature_rows"] == {"text": 8, "image": 8}


def test_recbole_loads_the_merged_dataset_with_its_features(domains, tmp_path):
    merge.merge_domains(domains, "FH", str(tmp_path / "FH"), ["text"])
    config = PluginConfig(model="SASRec", dataset="FH", config_dict={
        "data_path": str(tmp_path), "load_col": {"inter": ["user_id", "item_id", "timestamp", "domain"]},
        "modalities": ["text"], "modality_dims": {"text": 8}, "checkpoint_dir": str(tmp_path / "saved"),
    })
    dataset = MultiModalSequentialDataset(config)
    assert dataset.item_num == 9 and dataset.user_num == 7  # with padding
    assert bool(dataset.item_feature_mask("text")[1:].all())
    assert set(dataset.field2id_token["domain"][1:]) == {"Food", "Home"}


def test_a_dimension_mismatch_is_refused_before_anything_is_written(tmp_path):
    folders = [
        _domain(tmp_path, "Food", AMAZON_2018, write_raw_2018, {"image": 1280}),
        _domain(tmp_path, "Home", AMAZON_2023, write_raw_2023, {"image": 768}),
    ]
    with pytest.raises(ValueError, match=r"modality image: the domains' feature dimensions differ "
                                         r"\(.*Food\.image\.npy: 1280, .*Home\.image\.npy: 768\); extract every domain with the same encoder"):
        merge.merge_domains(folders, "FH", str(tmp_path / "merged"), ["image"])
    assert not (tmp_path / "merged").exists()
    with pytest.raises(ValueError, match="domains must have different folder names"):
        merge.merge_domains([folders[0], folders[0]], "FH", str(tmp_path / "merged"))
