"""Raw Amazon reviews to RecBole atomic files: the steps the 2018 and 2023 releases share.

A release (``amazon2018``, ``amazon2023``) only says how to read one interaction line and one
metadata record; everything else is here, identical for both:

1. read the interactions, counting malformed lines;
2. read the metadata of the items that were interacted with (first record of an item wins);
3. drop exact duplicate interactions (same user, item, rating and time: the rule of UniSRec,
   whose Amazon 2018 counts the MMM4Rec paper reports; the same item again at another time is
   a repeat purchase and stays), then interactions of items without metadata;
4. iterative k-core: drop users and items with fewer than k interactions until none is left;
5. order each user's interactions by time, ties in the order of the raw file (RecBole's own
   sort is stable, so it keeps this order), users by token;
6. write ``NAME.inter``, ``NAME.item`` and ``NAME.stats.json`` into a staging folder, then
   move them into place, the stats last (see :func:`build_dataset`).
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
from array import array
from dataclasses import astuple, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES

from recbole_mmm4rec.data.features import atomic_write
from recbole_mmm4rec.dataset_scripts.atomic_files import write_atomic_file
from recbole_mmm4rec.dataset_scripts.raw_files import (
    LineReport,
    MalformedLine,
    json_object,
    parsed_lines,
    required_text,
)

INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
ITEM_HEADER = [
    "item_id:token",
    "title:token_seq",
    "brand:token",
    "categories:token_seq",
    "description:token_seq",
    "features:token_seq",
    "image_url:token",
]
OUTPUT_SUFFIXES = (".inter", ".item", ".stats.json")  # moved into place in this order
STAGING_INFIX = ".staging-"
CATEGORY_SEPARATOR = " > "  # Amazon categories are a path from the top of the tree


@dataclass(frozen=True)
class RawInteraction:
    user: str
    item: str
    rating: float
    time: int  # in the release's unit (seconds in 2018, milliseconds in 2023)


@dataclass(frozen=True)
class ItemText:
    """The cleaned metadata of one item, one value per ``.item`` column after ``item_id``."""

    title: str
    brand: str
    categories: str
    description: str
    features: str
    image_url: str


@dataclass(frozen=True)
class AmazonRelease:
    """How one release of Amazon Reviews is read; the pipeline itself is shared."""

    name: str
    interactions_option: str  # command-line option naming the interactions file
    parse_interaction: Callable[[str], RawInteraction]
    meta_item_key: str  # the metadata field holding the item token
    # ItemText field (image_url aside) -> metadata keys tried in order; "a.b" is key b of dict a
    text_keys: Mapping[str, tuple[str, ...]]
    image_url: Callable[[dict[str, Any]], str]
    time_units_per_second: int


# A tag starts with a letter after "<" or "</", so text such as "size < 5 and > 3" survives.
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_SCRIPT_OR_STYLE_OPEN = re.compile(r"<(script|style)\b", re.IGNORECASE)
_BLOCK_ENDS = {
    "<!--": re.compile(r"-->"),
    "script": re.compile(r"</script\s*>", re.IGNORECASE),
    "style": re.compile(r"</style\s*>", re.IGNORECASE),
}
_WHITESPACE = re.compile(r"\s+")


class _NextMatch:
    """The next match of ``pattern`` at or after a position that only moves forward, searched
    again only once the position has passed it: over a whole text, each pattern scans it once.
    (A regular expression such as ``<!--.*?-->`` scans to the end from every unclosed ``<!--``:
    quadratic in hostile markup.)"""

    def __init__(self, pattern: re.Pattern, text: str) -> None:
        self.pattern, self.text = pattern, text
        self.match: re.Match | None = None
        self.searched_from = -1

    def at_or_after(self, position: int) -> re.Match | None:
        stale = self.match is not None and self.match.start() < position
        if self.searched_from < 0 or stale:
            self.match = self.pattern.search(self.text, position)
            self.searched_from = position
        return self.match


def _strip_markup(text: str) -> str:
    """``text`` with comments, script and style blocks and tags replaced by spaces, in one pass."""
    ends = {opening: _NextMatch(pattern, text) for opening, pattern in _BLOCK_ENDS.items()}
    parts, position = [], 0
    while (start := text.find("<", position)) >= 0:
        parts.append(text[position:start])
        block = _SCRIPT_OR_STYLE_OPEN.match(text, start)
        opening = "<!--" if text.startswith("<!--", start) else block and block.group(1).lower()
        end = ends[opening].at_or_after(block.end() if block else start + 4) if opening else None
        markup = end or _TAG.match(text, start)
        if markup is None:  # a "<" that opens nothing is text
            parts.append("<")
            position = start + 1
        else:
            parts.append(" ")
            position = markup.end()
    parts.append(text[position:])
    return "".join(parts)


def clean_text(value: Any) -> str:
    """Plain one-line text: HTML tags, scripts and entities removed, whitespace collapsed.

    Lists (Amazon's descriptions and features) are joined with spaces; missing values are "".
    Entities are decoded before and after removing tags: escaped markup (``&lt;b&gt;``) is
    removed too, and the doubly escaped ``&amp;amp;`` common in these dumps becomes ``&``.
    Linear in the length of the text, whatever the markup (unclosed comments, scripts, ...).
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(part for part in (clean_text(v) for v in value) if part)
    text = _strip_markup(html.unescape(str(value)))
    return _WHITESPACE.sub(" ", html.unescape(text)).strip()


def clean_categories(value: Any) -> str:
    """A category path (list of names) as ``"A > B > C"``."""
    names = value if isinstance(value, (list, tuple)) else [value]
    return CATEGORY_SEPARATOR.join(name for name in (clean_text(v) for v in names) if name)


def _first_value(record: dict[str, Any], keys: Sequence[str]) -> Any:
    """The first non-empty value among ``keys`` ("a.b": key b of the dict at key a)."""
    for key in keys:
        value: Any = record
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value:
            return value
    return None


def item_text(release: AmazonRelease, record: dict[str, Any]) -> ItemText:
    """The cleaned ``.item`` values of one metadata record."""
    values = {field: _first_value(record, keys) for field, keys in release.text_keys.items()}
    return ItemText(
        title=clean_text(values["title"]),
        brand=clean_text(values["brand"]),
        categories=clean_categories(values["categories"]),
        description=clean_text(values["description"]),
        features=clean_text(values["features"]),
        image_url=release.image_url(record),
    )


def recbole_token(value: str, field: str) -> str:
    """``value`` as a user or item token, unless RecBole's reader (pandas) would read it as
    missing (``NA``, ``null``, ``None``, ``nan``, ...) and drop its interactions: skipped here,
    so the stats count what RecBole will read."""
    if value in STR_NA_VALUES:
        raise MalformedLine(f"{field} {value!r} reads as a missing value in RecBole (pandas)")
    return value


def parse_rating(value: Any) -> float:
    try:
        rating = float(value)
    except (TypeError, ValueError):
        raise MalformedLine(f"rating {value!r} is not a number") from None
    if not math.isfinite(rating):
        raise MalformedLine(f"rating {value!r} is not finite")
    return rating


# Raw times must be exact in the float64 ``timestamp:float`` column RecBole reads.
MAX_ABS_TIME = 2**53
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: int() also takes "١٢٣" and "１２３"


def parse_time(value: Any) -> int:
    """A Unix time as an integer: an int, an integral float, or a string of ASCII digits (with
    an optional minus sign), of at most ``MAX_ABS_TIME`` in absolute value."""
    out_of_range = MalformedLine(f"timestamp {value!r} is out of range (at most 2**53 in absolute value)")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        digits = value.strip().lstrip("-").lstrip("0")
        if len(digits) > len(str(MAX_ABS_TIME)):  # int() of a huge string is slow, then refused
            raise out_of_range
        value = int(value.strip())
    if type(value) is not int:  # bool is an int subclass
        raise MalformedLine(f"timestamp {value!r} is not an integer")
    if abs(value) > MAX_ABS_TIME:
        raise out_of_range
    return value


def format_time(value: int, units_per_second: int) -> str:
    """Seconds as exact decimal text: 1588687728923 ms -> "1588687728.923", -1500 ms -> "-1.5"."""
    if units_per_second == 1:
        return str(value)
    seconds, fraction = divmod(abs(value), units_per_second)
    digits = len(str(units_per_second)) - 1
    text = f"{seconds}.{fraction:0{digits}d}".rstrip("0").rstrip(".")
    return f"-{text}" if value < 0 else text


class InteractionLog:
    """Interactions as integer-coded arrays: millions of rows without a Python object each."""

    def __init__(self) -> None:
        self.user_tokens: list[str] = []
        self.item_tokens: list[str] = []
        self._user_codes: dict[str, int] = {}
        self._item_codes: dict[str, int] = {}
        self._users, self._items, self._times = array("q"), array("q"), array("q")
        self._ratings = array("d")

    def append(self, interaction: RawInteraction) -> None:
        self._users.append(self._code(interaction.user, self._user_codes, self.user_tokens))
        self._items.append(self._code(interaction.item, self._item_codes, self.item_tokens))
        self._ratings.append(interaction.rating)
        self._times.append(interaction.time)

    @staticmethod
    def _code(token: str, codes: dict[str, int], tokens: list[str]) -> int:
        code = codes.get(token)
        if code is None:
            code = codes[token] = len(tokens)
            tokens.append(token)
        return code

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user codes, item codes, ratings, times), one entry per interaction in file order."""
        return (
            np.frombuffer(self._users, dtype=np.int64),
            np.frombuffer(self._items, dtype=np.int64),
            np.frombuffer(self._ratings, dtype=np.float64),
            np.frombuffer(self._times, dtype=np.int64),
        )


def read_interactions(path: str, release: AmazonRelease, report: LineReport) -> InteractionLog:
    log = InteractionLog()
    for interaction in parsed_lines(path, release.parse_interaction, report):
        log.append(interaction)
    return log


@dataclass
class MetadataReport(LineReport):
    items: int = 0  # distinct items with a metadata record
    duplicates: int = 0  # further records of an item already read


def read_item_texts(
    path: str, release: AmazonRelease, wanted: set[str], report: MetadataReport
) -> dict[str, ItemText]:
    """Cleaned metadata of the ``wanted`` items; the first record of an item wins."""
    seen: set[str] = set()
    texts: dict[str, ItemText] = {}

    def parse(line: str) -> tuple[str, ItemText | None]:
        record = json_object(line)
        token = required_text(record, release.meta_item_key)
        # Cleaned inside the line's parse: a record whose values break cleaning is a skipped line.
        return token, item_text(release, record) if token in wanted and token not in seen else None

    for token, text in parsed_lines(path, parse, report):
        if token in seen:
            report.duplicates += 1
            continue
        seen.add(token)
        if text is not None:
            texts[token] = text
    report.items = len(seen)
    return texts


def k_core(users: np.ndarray, items: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    """``keep`` narrowed until every kept user and item has at least ``k`` kept interactions."""
    keep = keep.copy()
    if k <= 1:
        return keep
    n_users = int(users.max()) + 1 if len(users) else 0
    n_items = int(items.max()) + 1 if len(items) else 0
    while True:
        user_counts = np.bincount(users[keep], minlength=n_users)
        item_counts = np.bincount(items[keep], minlength=n_items)
        drop = keep & ((user_counts[users] < k) | (item_counts[items] < k))
        if not drop.any():
            return keep
        keep &= ~drop


def filter_interactions(
    log: InteractionLog, has_metadata: np.ndarray, k: int
) -> tuple[np.ndarray, dict[str, int]]:
    """(mask of the interactions kept, interactions dropped per reason), steps 3 and 4."""
    users, items, ratings, times = log.arrays()
    frame = pd.DataFrame({"user": users, "item": items, "rating": ratings, "time": times})
    keep = ~frame.duplicated(keep="first").to_numpy()
    dropped = {"duplicate": int((~keep).sum())}
    with_metadata = has_metadata[items]
    dropped["no_metadata"] = int((keep & ~with_metadata).sum())
    keep &= with_metadata
    core = k_core(users, items, keep, k)
    dropped["kcore"] = int(keep.sum() - core.sum())
    return core, dropped


def chronological_rows(log: InteractionLog, keep: np.ndarray) -> np.ndarray:
    """Indices of the kept interactions: by user token, then time, then raw file order."""
    users, _, _, times = log.arrays()
    user_rank = np.empty(len(log.user_tokens), dtype=np.int64)
    user_rank[sorted(range(len(log.user_tokens)), key=log.user_tokens.__getitem__)] = np.arange(
        len(log.user_tokens)
    )
    rows = np.flatnonzero(keep)
    return rows[np.lexsort((rows, times[rows], user_rank[users[rows]]))]


def build_dataset(
    release: AmazonRelease,
    interactions_path: str,
    meta_path: str,
    name: str,
    out_dir: str,
    kcore: int = 5,
) -> dict[str, Any]:
    """Write ``NAME.inter``, ``NAME.item`` and ``NAME.stats.json`` into ``out_dir``; returns the stats.

    The three files are written into a staging folder inside ``out_dir`` and then moved into
    place, ``NAME.stats.json`` last and only after the old one was removed: whenever
    ``NAME.stats.json`` exists, the ``.inter`` and ``.item`` beside it are of its run. A run
    killed before that leaves its staging folder, which the next run removes.
    """
    remove_stale_outputs(out_dir, name)
    interaction_report = LineReport(interactions_path)
    log = read_interactions(interactions_path, release, interaction_report)
    meta_report = MetadataReport(meta_path)
    texts = read_item_texts(meta_path, release, set(log.item_tokens), meta_report)

    has_metadata = np.fromiter((t in texts for t in log.item_tokens), dtype=bool, count=len(log.item_tokens))
    keep, dropped = filter_interactions(log, has_metadata, kcore)
    rows = chronological_rows(log, keep)

    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(dir=out_dir, prefix=f".{name}{STAGING_INFIX}")
    try:
        stats = _write_outputs(staging, name, release, kcore, log, rows, texts, dropped, interaction_report, meta_report)
        publish_outputs(staging, out_dir, [f"{name}{suffix}" for suffix in OUTPUT_SUFFIXES])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stats


def _write_outputs(
    out_dir: str,
    name: str,
    release: AmazonRelease,
    kcore: int,
    log: InteractionLog,
    rows: np.ndarray,
    texts: dict[str, ItemText],
    dropped: dict[str, int],
    interaction_report: LineReport,
    meta_report: MetadataReport,
) -> dict[str, Any]:
    users, items, ratings, times = log.arrays()
    inter_rows = (
        (log.user_tokens[user], log.item_tokens[item], repr(rating), format_time(time, release.time_units_per_second))
        # Python scalars: indexing numpy arrays row by row is several times slower
        for user, item, rating, time in zip(
            users[rows].tolist(), items[rows].tolist(), ratings[rows].tolist(), times[rows].tolist()
        )
    )
    write_atomic_file(os.path.join(out_dir, f"{name}.inter"), INTER_HEADER, inter_rows)
    kept_items = sorted({log.item_tokens[code] for code in np.unique(items[rows])})
    write_atomic_file(
        os.path.join(out_dir, f"{name}.item"),
        ITEM_HEADER,
        ((token, *astuple(texts[token])) for token in kept_items),
    )

    stats = {
        "name": name,
        "release": release.name,
        "kcore": kcore,
        "users": int(len(np.unique(users[rows]))),
        "items": len(kept_items),
        "interactions": int(len(rows)),
        "interaction_lines": interaction_report.lines,
        "dropped_interactions": {"malformed": interaction_report.malformed, **dropped},
        "meta_lines": meta_report.lines,
        "meta_items": meta_report.items,
        "dropped_meta_lines": {"malformed": meta_report.malformed, "duplicate_item": meta_report.duplicates},
        "malformed_examples": {
            os.path.basename(interaction_report.path): interaction_report.examples,
            os.path.basename(meta_report.path): meta_report.examples,
        },
    }
    text = (json.dumps(stats, indent=2) + "\n").encode("utf-8")
    atomic_write(os.path.join(out_dir, f"{name}.stats.json"), lambda f: f.write(text))
    return stats


def remove_stale_outputs(out_dir: str, name: str) -> None:
    """Remove what a killed run of ``name`` left in ``out_dir``: its staging folders and the
    temporary files of earlier versions of this script, which wrote beside the outputs."""
    # atomic_replace's temporary names: ".tmp-" + mkstemp's 8 random characters + the file name
    temporary = re.compile(r"\.tmp-[a-z0-9_]{8}" + re.escape(name) + "(" + "|".join(map(re.escape, OUTPUT_SUFFIXES)) + ")")
    for entry in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        path = os.path.join(out_dir, entry)
        if entry.startswith(f".{name}{STAGING_INFIX}") and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif temporary.fullmatch(entry):
            os.unlink(path)


def publish_outputs(staging: str, out_dir: str, files: Sequence[str]) -> None:
    """Move ``files`` from ``staging`` into ``out_dir``; the last one (the stats, which say the
    set is complete) is removed first and moved last, so it never sits beside a mixed set."""
    last = os.path.join(out_dir, files[-1])
    if os.path.exists(last):
        os.unlink(last)
    for file in files:
        os.replace(os.path.join(staging, file), os.path.join(out_dir, file))


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(128 + signum)  # SystemExit runs the finally blocks that remove the staging folder


def main(release: AmazonRelease, description: str, argv: Sequence[str] | None = None) -> None:
    """The command line of a release's script."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(f"--{release.interactions_option}", required=True, help="raw interactions file")
    parser.add_argument("--meta", required=True, help="raw metadata file (.gz or plain)")
    parser.add_argument("--name", required=True, help="dataset name: files NAME.inter, NAME.item, ...")
    parser.add_argument("--out", required=True, help="dataset folder to write (created if missing)")
    parser.add_argument("--kcore", type=int, default=5, help="minimum interactions per user and per item")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    stats = build_dataset(
        release, getattr(args, release.interactions_option), args.meta, args.name, args.out, args.kcore
    )
    print(
        f"{args.name}: {stats['users']} users, {stats['items']} items, {stats['interactions']} "
        f"interactions written to {args.out}; dropped interactions {stats['dropped_interactions']}, "
        f"metadata lines {stats['dropped_meta_lines']}; details in {args.name}.stats.json"
    )
