"""Amazon scripts on hostile raw files: every bad line a counted skip, linear HTML cleaning,
exact negative times, and no mixed or stale outputs after a kill."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time

import pytest

from recbole_mmm4rec.dataset_scripts import amazon_common
from recbole_mmm4rec.dataset_scripts.amazon2018 import AMAZON_2018
from recbole_mmm4rec.dataset_scripts.amazon2023 import AMAZON_2023
from recbole_mmm4rec.dataset_scripts.amazon_common import build_dataset, clean_text, format_time
from recbole_mmm4rec.dataset_scripts.atomic_files import read_atomic_rows
from tests.amazon_fixtures import EXPECTED_COUNTS, ITEM, USER, write_raw_2018, write_raw_2023

DEEP = "[" * 100_000 + "]" * 100_000


def _append(path: str, lines: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def _reasons(stats: dict, path: str) -> list[str]:
    return [example["reason"] for example in stats["malformed_examples"][os.path.basename(path)]]


def test_hostile_review_lines_are_counted_skips(tmp_path):
    reviews, meta = write_raw_2023(tmp_path)

    def review(user=USER[9], timestamp=1000, **extra):
        return json.dumps({"rating": 5.0, "parent_asin": ITEM[2], "user_id": user, "timestamp": timestamp, **extra})

    hostile = [
        review(timestamp="1" * 30),  # 30 digits
        review(timestamp="١٢٣٤"),  # Arabic-Indic digits, which int() accepts
        review(timestamp=10**30),
        review(user="NA"),  # pandas reads these as missing: RecBole would drop them
        review(user="null"),
        '{"rating": 5.0, "user_id": "' + USER[9] + '", "parent_asin": "' + ITEM[2] + '", "x": ' + DEEP + "}",
    ]
    _append(reviews, hostile)
    stats = build_dataset(AMAZON_2023, reviews, meta, "Fix", str(tmp_path / "out"), kcore=2)

    # The fixture's 3 malformed lines plus every hostile one; the rest is unchanged.
    assert stats["interaction_lines"] == EXPECTED_COUNTS["interaction_lines"] + len(hostile)
    assert stats["dropped_interactions"]["malformed"] == 3 + len(hostile)
    assert stats["interactions"] == EXPECTED_COUNTS["interactions"]
    reasons = _reasons(stats, reviews)[3:]
    assert "out of range" in reasons[0] and "is not an integer" in reasons[1] and "out of range" in reasons[2]
    assert "reads as a missing value in RecBole" in reasons[3] and "'null'" in reasons[4]
    assert reasons[5].startswith("RecursionError") and all(len(reason) < 300 for reason in reasons)


def test_hostile_metadata_lines_are_counted_skips(tmp_path):
    ratings, meta = write_raw_2018(tmp_path)
    plain_meta = tmp_path / "meta.json"
    with gzip.open(meta, "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    # Each bad record comes before the good record of its item: that one wins.
    hostile = [
        json.dumps({"asin": ITEM[4], "title": "Bad", "imageURLHighRes": 5}),  # an int, not a list of URLs
        json.dumps({"asin": ITEM[5], "title": "Deep", "description": json.loads("[" * 50 + "]" * 50)}),
        '{"asin": "' + ITEM[5] + '", "title": ' + DEEP + "}",
    ]
    plain_meta.write_text("\n".join(hostile + lines) + "\n", encoding="utf-8")
    stats = build_dataset(AMAZON_2018, ratings, str(plain_meta), "Fix", str(tmp_path / "out"), kcore=2)

    assert stats["meta_lines"] == EXPECTED_COUNTS["meta_lines"] + 3
    # the first bad record fails in cleaning, the third in JSON; the second (deep but fine) is read
    assert stats["dropped_meta_lines"] == {"malformed": 2 + 2, "duplicate_item": 1 + 1}
    reasons = _reasons(stats, str(plain_meta))
    assert reasons[0].startswith("TypeError") and reasons[1].startswith("RecursionError")
    assert {key: stats[key] for key in ("users", "items", "interactions")} == {
        key: EXPECTED_COUNTS[key] for key in ("users", "items", "interactions")}


def test_negative_millisecond_times_are_exact():
    assert [format_time(t, 1000) for t in (-1500, -500, -2000, -1, 1588687728923, 0)] == [
        "-1.5", "-0.5", "-2", "-0.001", "1588687728.923", "0"]


@pytest.mark.parametrize("unit", ["<!--", "<script", "<style x", "<a", "</script", "<!--<script <b"])
def test_html_cleaning_is_linear_on_hostile_markup(unit):
    text = (unit * (2**20 // len(unit) + 1))[: 2**20]  # 1 MB
    started = time.perf_counter()
    cleaned = clean_text(text)
    seconds = time.perf_counter() - started
    # 0.1-0.4 s on a loaded 2-core machine; the regular expressions before took ~1000 s on "<!--"
    assert seconds < 2.0, f"{seconds:.2f} s for 1 MB of {unit!r}"
    assert len(cleaned) <= len(text)


def test_html_cleaning_keeps_its_results():
    assert clean_text("a<b c <!-- x --> d<!-- e <SCRIPT>f</script >g<style x>h") == "a<b c d<!-- e g h"
    assert clean_text("x<script>never closed <b>bold</b>") == "x never closed bold"


def test_a_kill_while_publishing_never_leaves_stats_beside_mixed_files(tmp_path, monkeypatch):
    ratings, meta = write_raw_2018(tmp_path)
    out = tmp_path / "out"
    build_dataset(AMAZON_2018, ratings, meta, "Fix", str(out), kcore=2)
    old_inter, old_item = (out / "Fix.inter").read_bytes(), (out / "Fix.item").read_bytes()
    _append(ratings, [f"{ITEM[4]},{USER[3]},1.0,900", f"{ITEM[4]},{USER[4]},1.0,901"])  # more rows survive

    replace = os.replace

    def killed_after_the_inter(source, target):
        if target == str(out / "Fix.item"):  # publishing, not writing into the staging folder
            raise KeyboardInterrupt  # stands for the kill
        replace(source, target)

    monkeypatch.setattr(amazon_common.os, "replace", killed_after_the_inter)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(AMAZON_2018, ratings, meta, "Fix", str(out), kcore=2)
    # a new .inter beside the old .item, but no stats file claiming they belong together
    assert (out / "Fix.inter").read_bytes() != old_inter
    assert not (out / "Fix.stats.json").exists() and (out / "Fix.item").read_bytes() == old_item
    monkeypatch.setattr(amazon_common.os, "replace", replace)

    # A SIGKILL leaves the staging folder (and older versions left .tmp-* files): the next run removes them.
    (out / ".Fix.staging-killed").mkdir()
    (out / ".Fix.staging-killed" / "Fix.inter").write_text("half")
    (out / ".tmp-k2x_9qzaFix.inter").write_text("half")
    (out / ".tmp-k2x_9qzaOtherFix.inter").write_text("another dataset's")
    stats = build_dataset(AMAZON_2018, ratings, meta, "Fix", str(out), kcore=2)
    assert sorted(os.listdir(out)) == [".tmp-k2x_9qzaOtherFix.inter", "Fix.inter", "Fix.item", "Fix.stats.json"]
    assert stats["interactions"] == len(list(read_atomic_rows(str(out / "Fix.inter"))))


def test_sigterm_removes_the_staging_folder(tmp_path):
    ratings, meta = write_raw_2018(tmp_path)
    out = tmp_path / "out"
    # The script, killed (SIGTERM) while it writes its outputs.
    program = (
        "import os, signal, sys\n"
        "from recbole_mmm4rec.dataset_scripts import amazon_common\n"
        "from recbole_mmm4rec.dataset_scripts.amazon2018 import AMAZON_2018\n"
        "amazon_common.publish_outputs = lambda *args: os.kill(os.getpid(), signal.SIGTERM)\n"
        "amazon_common.main(AMAZON_2018, '', sys.argv[1:])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, "--ratings", ratings, "--meta", meta, "--name", "Fix", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 128 + 15, done.stderr
    assert os.listdir(out) == []
