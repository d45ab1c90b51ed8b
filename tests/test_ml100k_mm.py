"""The demo dataset ml-100k-mm: real MiniLM text and knowledge-graph features, built offline."""
from __future__ import annotations

import os

import numpy as np
import pytest

from recbole_mmm4rec.data import read_item_features
from recbole_mmm4rec.data.features import default_mode
from recbole_mmm4rec.dataset_scripts import ml100k_mm
from recbole_mmm4rec.quick_start import ensure_dataset_files

SEQUELS = [("50", "172"), ("50", "181"), ("127", "187")]  # Star Wars / Empire / Jedi; Godfather I / II
UNRELATED = [("50", "71"), ("127", "1"), ("181", "95")]  # vs Lion King, Toy Story, Aladdin


def features(folder, modality):
    tokens, matrix = read_item_features(os.path.join(folder, f"ml-100k-mm.{modality}.npy"))
    return tokens, np.asarray(matrix)


def cosine(tokens, matrix, a, b):
    x, y = matrix[tokens.index(a)], matrix[tokens.index(b)]
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def test_files_shapes_and_dtypes(ml100k_mm_dir):
    for suffix in ("inter", "item", "user"):
        assert os.path.getsize(os.path.join(ml100k_mm_dir, f"ml-100k-mm.{suffix}")) > 0
    text_tokens, text = features(ml100k_mm_dir, "text")
    assert text.shape == (1682, 384) and text.dtype == np.float32
    assert text_tokens == [str(i) for i in range(1, 1683)]
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-4)
    kg_tokens, kg = features(ml100k_mm_dir, "kg")
    assert kg.shape == (len(kg_tokens), 64) and kg.dtype == np.float32
    assert 1500 < len(kg_tokens) < 1682  # movies with a Freebase link and graph neighbours
    assert np.isfinite(kg).all() and np.abs(kg).sum(axis=1).min() > 0


def test_text_features_carry_content(ml100k_mm_dir):
    tokens, matrix = features(ml100k_mm_dir, "text")
    for (a, b), (c, d) in zip(SEQUELS, UNRELATED):
        assert cosine(tokens, matrix, a, b) > cosine(tokens, matrix, c, d) + 0.05


def test_kg_features_keep_the_graph_structure(ml100k_mm_dir):
    """Movies that share a director in the knowledge graph are much closer than random pairs."""
    source = ml100k_mm.source_dir()
    links = ml100k_mm.read_atomic(os.path.join(source, "ml-100k.link"))
    triples = ml100k_mm.read_atomic(os.path.join(source, "ml-100k.kg"))
    item_of_entity = dict(zip(links["entity_id"], links["item_id"]))
    directed = triples[triples["relation_id"] == "film.film.directed_by"]
    tokens, matrix = features(ml100k_mm_dir, "kg")
    row = {token: i for i, token in enumerate(tokens)}
    films_by_director: dict[str, list[int]] = {}
    for film, director in zip(directed["head_id"], directed["tail_id"]):
        if item_of_entity.get(film) in row:
            films_by_director.setdefault(director, []).append(row[item_of_entity[film]])
    pairs = np.array([(a, b) for films in films_by_director.values() for i, a in enumerate(films) for b in films[i + 1 :]])
    assert len(pairs) > 500
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    random_pairs = np.random.default_rng(0).integers(0, len(tokens), size=(20000, 2))
    same_director = float((unit[pairs[:, 0]] * unit[pairs[:, 1]]).sum(axis=1).mean())
    random = float((unit[random_pairs[:, 0]] * unit[random_pairs[:, 1]]).sum(axis=1).mean())
    assert same_director > random + 0.25


def test_rebuilding_gives_identical_features(ml100k_mm_dir):
    source = ml100k_mm.source_dir()
    item_tokens, texts = ml100k_mm.item_texts(ml100k_mm.read_atomic(os.path.join(source, "ml-100k.item")))
    assert texts[49] == "Star Wars (1977); Action, Adventure, Romance, Sci-Fi, War"
    np.testing.assert_array_equal(ml100k_mm.text_features(texts), features(ml100k_mm_dir, "text")[1])
    kg_tokens, kg = ml100k_mm.kg_features(
        ml100k_mm.read_atomic(os.path.join(source, "ml-100k.link")),
        ml100k_mm.read_atomic(os.path.join(source, "ml-100k.kg")),
    )
    assert kg_tokens == features(ml100k_mm_dir, "kg")[0]
    np.testing.assert_array_equal(kg, features(ml100k_mm_dir, "kg")[1])


def test_dataset_is_built_on_first_use_only(ml100k_mm_dir, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(ml100k_mm, "build_ml100k_mm", lambda folder: built.append(folder) or _copy(ml100k_mm_dir, folder))
    config = {"data_path": str(tmp_path / "ml-100k-mm"), "dataset": "ml-100k-mm", "benchmark_filename": None}
    ensure_dataset_files(config)
    ensure_dataset_files(config)
    assert len(built) == 1
    assert sorted(os.listdir(tmp_path)) == ["ml-100k-mm"]  # no staging folder left behind
    assert os.path.isfile(tmp_path / "ml-100k-mm" / "ml-100k-mm.text.npy")
    assert os.stat(tmp_path / "ml-100k-mm").st_mode & 0o777 == default_mode(0o777)


def test_existing_folder_without_the_dataset_is_left_alone(tmp_path):
    folder = tmp_path / "ml-100k-mm"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    config = {"data_path": str(folder), "dataset": "ml-100k-mm", "benchmark_filename": None}
    with pytest.raises(FileExistsError, match="exists but holds no ml-100k-mm.inter"):
        ensure_dataset_files(config)
    assert os.listdir(folder) == ["notes.txt"] and (folder / "notes.txt").read_text() == "mine"


def _copy(source, folder):
    import shutil

    shutil.copytree(source, folder, dirs_exist_ok=True)
