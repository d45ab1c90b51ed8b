"""Amazon Reviews 2018 and 2023 raw files to atomic files: exact counts, k-core, order, determinism."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from recbole_mmm4rec.dataset_scripts.amazon2018 import AMAZON_2018
from recbole_mmm4rec.dataset_scripts.amazon2023 import AMAZON_2023
from recbole_mmm4rec.dataset_scripts.amazon_common import build_dataset, clean_text, k_core
from recbole_mmm4rec.dataset_scripts.atomic_files import read_atomic_header, read_atomic_rows
from tests.amazon_fixtures import (
    EXPECTED_COUNTS,
    EXPECTED_INTER,
    EXPECTED_ITEMS_2018,
    EXPECTED_ITEMS_2023,
    write_random_2018,
    write_raw_2018,
    write_raw_2023,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_SUFFIXES = (".inter", ".item", ".stats.json")


def _inter_rows(folder, name):
    return [tuple(row) for row in read_atomic_rows(os.path.join(folder, f"{name}.inter"))]


@pytest.mark.parametrize(
    "release, write_raw, expected_items, tie_time",
    [(AMAZON_2018, write_raw_2018, EXPECTED_ITEMS_2018, "200"), (AMAZON_2023, write_raw_2023, EXPECTED_ITEMS_2023, "200.5")],
    ids=["2018", "2023"],
)
def test_hand_made_fixture_gives_exact_rows_and_counts(tmp_path, release, write_raw, expected_items, tie_time):
    interactions, meta = write_raw(tmp_path)
    out = tmp_path / "out"
    stats = build_dataset(release, interactions, meta, "Fix", str(out), kcore=2)

    expected_inter = [(u, i, r, tie_time if (u, t) == (EXPECTED_INTER[1][0], 200) else str(t))
                      for u, i, r, t in EXPECTED_INTER]
    assert _inter_rows(out, "Fix") == expected_inter
    assert [row for row in read_atomic_rows(str(out / "Fix.item"))] == expected_items
    assert {key: stats[key] for key in EXPECTED_COUNTS} == EXPECTED_COUNTS
    assert stats["release"] == release.name and stats["kcore"] == 2
    assert json.loads((out / "Fix.stats.json").read_text()) == stats
    # every raw line is accounted for exactly once
    assert stats["interaction_lines"] == stats["interactions"] + sum(stats["dropped_interactions"].values())
    examples = stats["malformed_examples"][os.path.basename(interactions)]
    assert [e["line"] for e in examples] == [16, 17, 18]
    assert read_atomic_header(str(out / "Fix.inter")) == [
        "user_id:token", "item_id:token", "rating:float", "timestamp:float"]


def test_recbole_reads_the_atomic_files_back_exactly(tmp_path):
    """RecBole's own reader (pandas, python engine, tab separator) sees the written text."""
    out = tmp_path / "out"
    build_dataset(AMAZON_2018, *write_raw_2018(tmp_path), "Fix", str(out), kcore=2)
    items = pd.read_csv(out / "Fix.item", sep="\t", dtype=str, keep_default_na=False, engine="python")
    assert items.values.tolist() == EXPECTED_ITEMS_2018
    inter = pd.read_csv(out / "Fix.inter", sep="\t", engine="python")
    assert inter["timestamp:float"].tolist() == [100, 200, 200, 150, 250, 350, 100, 200]


def _reference_k_core(rows: list[tuple[str, str]], k: int) -> list[tuple[str, str]]:
    """The textbook definition, one user or item at a time."""
    while True:
        users, items = Counter(u for u, _ in rows), Counter(i for _, i in rows)
        kept = [(u, i) for u, i in rows if users[u] >= k and items[i] >= k]
        if len(kept) == len(rows):
            return rows
        rows = kept


@pytest.mark.parametrize("k", [3, 5])
def test_k_core_holds_and_matches_the_reference(tmp_path, k):
    ratings, meta = write_random_2018(tmp_path, n_users=300, n_items=60, per_user=(1, 9), seed=k)
    out = tmp_path / "out"
    stats = build_dataset(AMAZON_2018, ratings, meta, "Rnd", str(out), kcore=k)
    rows = _inter_rows(out, "Rnd")
    users, items = Counter(r[0] for r in rows), Counter(r[1] for r in rows)
    assert min(users.values()) >= k and min(items.values()) >= k
    assert stats["dropped_interactions"]["kcore"] > 0 and stats["dropped_interactions"]["no_metadata"] > 0

    raw = [line.split(",") for line in open(ratings).read().split()]
    last_item = max(item for item, *_ in raw)  # the one item without metadata
    deduplicated = list(dict.fromkeys((u, i, r, t) for i, u, r, t in raw if i != last_item))
    expected = _reference_k_core([(u, i) for u, i, _, _ in deduplicated], k)
    assert Counter((r[0], r[1]) for r in rows) == Counter(expected)
    assert (stats["users"], stats["items"], stats["interactions"]) == (len(users), len(items), len(rows))


def test_order_is_chronological_per_user_with_ties_in_file_order(tmp_path):
    ratings, meta = write_random_2018(tmp_path, n_users=200, n_items=40, per_user=(3, 9), seed=1)
    out = tmp_path / "out"
    build_dataset(AMAZON_2018, ratings, meta, "Rnd", str(out), kcore=3)
    rows = _inter_rows(out, "Rnd")
    raw_position = {}
    for position, line in enumerate(open(ratings).read().split()):
        item, user, rating, time = line.split(",")
        raw_position.setdefault((user, item, rating, time), position)
    keys = [(u, int(t), raw_position[(u, i, r, t)]) for u, i, r, t in rows]
    assert keys == sorted(keys)
    assert any(a[:2] == b[:2] for a, b in zip(keys, keys[1:]))  # the fixture has ties


def test_outputs_are_byte_identical_across_runs(tmp_path):
    ratings, meta = write_random_2018(tmp_path, n_users=200, n_items=40, per_user=(1, 9), seed=2)
    for run in ("a", "b"):
        build_dataset(AMAZON_2018, ratings, meta, "Rnd", str(tmp_path / run), kcore=3)
    for suffix in OUTPUT_SUFFIXES:
        assert (tmp_path / "a" / f"Rnd{suffix}").read_bytes() == (tmp_path / "b" / f"Rnd{suffix}").read_bytes()


def test_a_cut_gzip_file_is_an_error_not_a_smaller_dataset(tmp_path):
    ratings, meta = write_raw_2018(tmp_path)
    whole = open(meta, "rb").read()
    cut = tmp_path / "meta_cut.json.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"meta_cut\.json\.gz: the compressed file is cut or damaged .* download it again"):
        build_dataset(AMAZON_2018, ratings, str(cut), "Fix", str(tmp_path / "out"), kcore=2)
    assert not (tmp_path / "out").exists()


def test_plain_metadata_and_non_utf8_lines(tmp_path):
    ratings, meta = write_raw_2018(tmp_path)
    plain = tmp_path / "meta.json"
    plain.write_bytes(gzip.decompress(open(meta, "rb").read()) + b'{"asin": "B0\xff"}\n')
    stats = build_dataset(AMAZON_2018, ratings, str(plain), "Fix", str(tmp_path / "out"), kcore=2)
    assert stats["dropped_meta_lines"]["malformed"] == 3
    assert stats["malformed_examples"]["meta.json"][-1]["reason"].startswith("not UTF-8")
    assert stats["interactions"] == 8


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("<p>One&nbsp;<b>two</b></p>\n<br>three", "One two three"),
        ("Tom &amp;amp; Jerry", "Tom & Jerry"),
        ("<script type='x'>var a = '<b>';</script>kept<style>p {}</style>", "kept"),
        ("size < 5 and > 3", "size < 5 and > 3"),
        ("&lt;div&gt;escaped markup&lt;/div&gt;", "escaped markup"),
        (["a", None, "", "<i>b</i>"], "a b"),
        (None, ""),
        ("tab\tand\r\nnewline", "tab and newline"),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_k_core_of_nothing_and_k_one():
    empty = np.zeros(0, dtype=np.int64)
    assert k_core(empty, empty, np.zeros(0, dtype=bool), 5).shape == (0,)
    keep = np.array([True, False])
    assert k_core(np.array([0, 1]), np.array([0, 0]), keep, 1).tolist() == [True, False]


def test_command_lines_as_script_and_as_module(tmp_path):
    ratings, meta = write_raw_2018(tmp_path)
    reviews, meta23 = write_raw_2023(tmp_path)
    commands = [
        [sys.executable, os.path.join(REPO, "dataset_scripts", "amazon2018.py"), "--ratings", ratings,
         "--meta", meta, "--name", "Fix", "--out", str(tmp_path / "a"), "--kcore", "2"],
        [sys.executable, "-m", "recbole_mmm4rec.dataset_scripts.amazon2023", "--reviews", reviews,
         "--meta", meta23, "--name", "Fix", "--out", str(tmp_path / "b"), "--kcore", "2"],
    ]
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "Fix: 3 users, 4 items, 8 interactions written to" in done.stdout
    assert _inter_rows(tmp_path / "a", "Fix")[0] == _inter_rows(tmp_path / "b", "Fix")[0]
