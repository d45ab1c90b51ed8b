"""The item feature file format, and aligning its rows with RecBole's item ids.

A modality's features are two files side by side:

* ``<stem>.npy``: a 2-D float array ``(rows, dim)`` (float16/32/64; loaded as float32);
* ``<stem>.tokens``: UTF-8 text, one RecBole item token per line; line ``i`` names row ``i``.

The default stem for modality ``m`` of dataset ``d`` is ``<data_path>/<d>/<d>.<m>``. Rows are
matched to items by token, so their order does not matter; RecBole's id remapping decides where
each row lands.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Mapping, Sequence

import numpy as np

MISSING_FEATURE_POLICIES = ("zero", "mean", "learned", "error")
TOKENS_SUFFIX = ".tokens"
PADDING_TOKEN = "[PAD]"


class FeatureFileError(ValueError):
    """A feature file is missing, malformed, or does not fit the dataset."""


def tokens_path_for(features_path: str) -> str:
    """``x/d.text.npy`` -> ``x/d.text.tokens``."""
    stem = features_path[: -len(".npy")] if features_path.endswith(".npy") else features_path
    return stem + TOKENS_SUFFIX


def _examples(values: Sequence, limit: int = 5) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:limit])
    return shown + (", ..." if len(values) > limit else "")


def default_mode(base: int) -> int:
    """The mode a plain open() (0o666) or mkdir() (0o777) would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def atomic_replace(path: str, write_to: Callable[[str], object]) -> None:
    """``write_to(temporary)`` fills a temporary file in ``path``'s folder, which is then renamed
    to ``path``: a reader never sees a half file, and a failure leaves the old file as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(handle)
    try:
        write_to(temporary)
        os.chmod(temporary, default_mode(0o666))  # mkstemp creates 0600
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def atomic_write(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file in the same folder, then rename: never a half file."""

    def write_to(temporary: str) -> None:
        with open(temporary, "wb") as f:
            write(f)

    atomic_replace(path, write_to)


def _checked_tokens(features_path: str, tokens: Sequence[str]) -> list[str]:
    tokens = [str(t) for t in tokens]
    bad = [t for t in tokens if not t or "\n" in t or "\r" in t]
    if bad:
        raise FeatureFileError(f"{features_path}: tokens must be non-empty single lines: {_examples(bad)}")
    return tokens


def _write_tokens(features_path: str, tokens: list[str]) -> None:
    text = "".join(t + "\n" for t in tokens).encode("utf-8")
    atomic_write(tokens_path_for(features_path), lambda f: f.write(text))


def write_item_features(features_path: str, tokens: Sequence[str], matrix: np.ndarray) -> None:
    """Write a feature matrix and its row tokens in the format :func:`read_item_features` reads."""
    matrix = np.asarray(matrix)
    if not np.issubdtype(matrix.dtype, np.floating):
        raise FeatureFileError(f"{features_path}: expected float values, got dtype {matrix.dtype}")
    if matrix.ndim != 2 or matrix.shape[0] != len(tokens):
        raise FeatureFileError(
            f"{features_path}: expected a (rows, dim) matrix with one row per token, "
            f"got shape {matrix.shape} for {len(tokens)} tokens"
        )
    write_item_feature_blocks(features_path, tokens, [matrix], matrix.shape[1], matrix.dtype)


def write_item_feature_blocks(
    features_path: str,
    tokens: Sequence[str],
    blocks: Iterable[np.ndarray],
    dim: int,
    dtype: np.dtype | type = np.float32,
) -> None:
    """Write ``(rows, dim)`` blocks, in order, as one feature matrix with its row tokens.

    The matrix is filled through a memory map of a temporary ``.npy`` file that is then renamed,
    so a catalogue larger than memory can be written block by block, and a failure (a block of
    the wrong width, too few or too many rows) leaves any previous file untouched.
    """
    tokens = _checked_tokens(features_path, tokens)
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise FeatureFileError(f"{features_path}: expected float values, got dtype {dtype}")

    def fill(temporary: str) -> None:
        matrix = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=(len(tokens), dim))
        row = 0
        for block in blocks:
            block = np.asarray(block)
            if block.ndim != 2 or block.shape[1] != dim or row + block.shape[0] > len(tokens):
                raise FeatureFileError(
                    f"{features_path}: expected blocks of shape (rows, {dim}) adding up to "
                    f"{len(tokens)} rows, got a block of shape {block.shape} at row {row}"
                )
            matrix[row : row + block.shape[0]] = block
            row += block.shape[0]
        if row != len(tokens):
            raise FeatureFileError(f"{features_path}: expected {len(tokens)} rows, got {row}")
        matrix.flush()
        del matrix  # close the memory map before the rename

    atomic_replace(features_path, fill)
    _write_tokens(features_path, tokens)


def read_item_features(
    features_path: str, tokens_path: str | None = None, expected_dim: int | None = None
) -> tuple[list[str], np.ndarray]:
    """Read and validate one modality's features. The matrix is memory-mapped, not copied.

    Raises :class:`FeatureFileError` naming the file and what was expected for: a missing file,
    a matrix that is not 2-D float, a dimension other than ``expected_dim``, a row count that
    differs from the token count, duplicate tokens, NaN or infinite values.
    """
    tokens_path = tokens_path or tokens_path_for(features_path)
    for path, what in ((features_path, "feature matrix (.npy)"), (tokens_path, "row tokens")):
        if not os.path.isfile(path):
            raise FeatureFileError(
                f"missing {what} file {path}. Write it with "
                "recbole_mmm4rec.data.write_item_features, or set modality_files in your YAML."
            )
    try:
        matrix = np.load(features_path, mmap_mode="r", allow_pickle=False)
    except Exception as error:  # an empty or damaged header fails anywhere in numpy's parser
        raise FeatureFileError(
            f"{features_path}: not a readable .npy array ({type(error).__name__}: {error}); write it again "
            "with recbole_mmm4rec.data.write_item_features or numpy.save"
        ) from error
    if matrix.ndim != 2:
        raise FeatureFileError(
            f"{features_path}: expected a 2-D (rows, dim) array, found shape {matrix.shape}"
        )
    if not np.issubdtype(matrix.dtype, np.floating):
        raise FeatureFileError(f"{features_path}: expected float values, found dtype {matrix.dtype}")
    if expected_dim is not None and matrix.shape[1] != int(expected_dim):
        raise FeatureFileError(
            f"{features_path}: expected feature dimension {expected_dim} (modality_dims), "
            f"found {matrix.shape[1]}"
        )
    with open(tokens_path, "rb") as f:
        raw = f.read()
    try:
        # Split on "\n" only: str.splitlines() also splits on \x85, \u2028, ... inside tokens.
        tokens = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise FeatureFileError(
            f"{tokens_path}: line {line} is not UTF-8 text ({error.reason} at byte {error.start}); the "
            ".tokens file must hold one UTF-8 item token per line"
        ) from None
    if tokens and tokens[-1] == "":
        tokens.pop()
    if tokens and tokens[-1].strip() == "" and len(tokens) == matrix.shape[0] + 1:
        raise FeatureFileError(f"{tokens_path}: line {len(tokens)} is an empty token (a blank line at the end?)")
    if len(tokens) != matrix.shape[0]:
        raise FeatureFileError(
            f"{tokens_path}: expected {matrix.shape[0]} tokens, one per row of {features_path}, "
            f"found {len(tokens)}"
        )
    empty_lines = [i + 1 for i, token in enumerate(tokens) if not token.strip()]
    if empty_lines:
        raise FeatureFileError(f"{tokens_path}: empty token on line(s) {_examples(empty_lines)}")
    unique, counts = np.unique(np.asarray(tokens, dtype=object), return_counts=True)
    duplicated = unique[counts > 1]
    if len(duplicated):
        raise FeatureFileError(
            f"{tokens_path}: {len(duplicated)} token(s) name more than one row, e.g. {_examples(duplicated)}"
        )
    finite_rows = np.isfinite(matrix).all(axis=1)
    if not finite_rows.all():
        bad_rows = np.flatnonzero(~finite_rows)
        raise FeatureFileError(
            f"{features_path}: {len(bad_rows)} rows hold NaN or infinite values, e.g. rows "
            f"{_examples(bad_rows.tolist())} (tokens {_examples([tokens[i] for i in bad_rows])})"
        )
    return tokens, matrix


ALIGN_ROWS_PER_BLOCK = 65_536


@dataclass
class AlignedFeatures:
    """Features indexed by RecBole item id. Row 0 is padding and always zero."""

    table: np.ndarray  # (item_num, dim) float32
    has_feature: np.ndarray  # (item_num,) bool; False for padding and for items without a row
    unused_rows: int  # rows of items filtered out of the dataset, or unknown and ignored


def align_item_features(
    tokens: Sequence[str],
    matrix: np.ndarray,
    token_to_id: Mapping[str, int],
    raw_item_tokens: set[str],
    policy: str,
    source: str,
    ignore_unknown_tokens: bool = False,
    out_path: str | None = None,
) -> AlignedFeatures:
    """Place each feature row at its item's RecBole id and fill items without a row.

    Args:
        tokens, matrix: a modality's rows as read by :func:`read_item_features`.
        token_to_id: RecBole's ``field2token_id[item field]`` (includes ``[PAD]`` -> 0).
        raw_item_tokens: every item token of the atomic files before filtering; a row whose
            token is outside both this and ``token_to_id`` is an error (wrong file or field).
        policy: one of :data:`MISSING_FEATURE_POLICIES`. ``learned`` leaves missing rows at
            zero: the model replaces them with a trained vector using ``has_feature``.
        source: the file named in error messages (the .tokens file: errors are about tokens).
        ignore_unknown_tokens: skip rows of tokens the dataset never had instead of raising
            (for a feature file computed over a larger item catalogue).
        out_path: write the table there, block by block, and return it memory-mapped
            (copy-on-write): processes that map the same file share its pages, and no process
            ever holds a second copy of the matrix.
    """
    if policy not in MISSING_FEATURE_POLICIES:
        raise FeatureFileError(
            f"missing_feature_policy for {source}: expected one of {MISSING_FEATURE_POLICIES}, "
            f"found {policy!r}"
        )
    item_num = len(token_to_id)
    ids = np.fromiter((token_to_id.get(t, -1) for t in tokens), dtype=np.int64, count=len(tokens))
    unmatched = np.flatnonzero(ids < 0)
    unknown = [tokens[i] for i in unmatched if tokens[i] not in raw_item_tokens]
    if unknown and not ignore_unknown_tokens:
        raise FeatureFileError(
            f"{source}: {len(unknown)} of {len(tokens)} row tokens are not items of the dataset, "
            f"e.g. {_examples(unknown)}. Each line of the .tokens file must be an item token of "
            "the dataset's item id field; if the file covers a larger catalogue on purpose, set "
            "unknown_feature_tokens: ignore."
        )
    if PADDING_TOKEN in tokens:
        raise FeatureFileError(f"{source}: the padding token {PADDING_TOKEN} cannot have a feature row")
    matched = ids >= 0
    has_feature = np.zeros(item_num, dtype=bool)
    has_feature[ids[matched]] = True
    missing = np.flatnonzero(~has_feature[1:]) + 1
    if len(missing) and policy == "error":
        id_to_token = {i: t for t, i in token_to_id.items()}
        raise FeatureFileError(
            f"{source}: {len(missing)} of {item_num - 1} items have no feature row, e.g. tokens "
            f"{_examples([id_to_token[i] for i in missing])}. Add rows for them or set "
            "missing_feature_policy to zero, mean or learned."
        )
    if item_num > 1 and not has_feature.any():
        # Under zero or learned every item would get the same vector: training on nothing.
        raise FeatureFileError(
            f"{source}: none of the dataset's {item_num - 1} items has a feature row ({len(tokens)} rows, e.g. "
            f"tokens {_examples(tokens)}); the tokens must be item tokens of the dataset's item id field"
        )

    shape = (item_num, matrix.shape[1])
    temporary = out_path and f"{out_path}.{os.getpid()}.tmp"
    table = np.zeros(shape, np.float32) if out_path is None else np.lib.format.open_memmap(temporary, "w+", np.float32, shape)
    rows = np.flatnonzero(matched)
    for start in range(0, len(rows), ALIGN_ROWS_PER_BLOCK):
        block = rows[start : start + ALIGN_ROWS_PER_BLOCK]
        table[ids[block]] = np.asarray(matrix[block], dtype=np.float32)
    if len(missing) and policy == "mean":
        present = np.flatnonzero(has_feature)
        total = sum(
            table[present[start : start + ALIGN_ROWS_PER_BLOCK]].sum(axis=0, dtype=np.float64)
            for start in range(0, len(present), ALIGN_ROWS_PER_BLOCK)
        )
        table[missing] = (total / len(present)).astype(np.float32)
    if out_path is not None:
        table.flush()
        del table
        os.replace(temporary, out_path)  # processes aligning the same file write the same bytes
        table = np.load(out_path, mmap_mode="c")
    return AlignedFeatures(table=table, has_feature=has_feature, unused_rows=int(len(unmatched)))
