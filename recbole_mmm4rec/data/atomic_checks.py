"""Checks of RecBole atomic files (``.inter``, ``.item``, ...) as RecBole reads them.

RecBole 1.2.1 reads what it can and silently changes the rest: a blank timestamp becomes the
column's mean (which reorders the user's sequence), a row with more fields than the header is
read shifted, a float beyond float32's range becomes inf; an empty file, a missing id or time
column and a dataset without a training sample end in tracebacks that name no file. Each is an
:class:`AtomicFileError` here, naming the file, the lines or column and what to fix.
:class:`recbole_mmm4rec.data.recbole_datasets.PluginDatasetMixin` runs them for this package's
version of every RecBole dataset class, and for :class:`~recbole_mmm4rec.data.MultiModalSequentialDataset`.
"""
from __future__ import annotations

import csv
from typing import Any, Sequence

import numpy as np
import pandas as pd

MAX_LINES_SHOWN = 5
FLOAT32_MAX = float(np.finfo(np.float32).max)


class AtomicFileError(ValueError):
    """An atomic file that RecBole would misread, or from which no model can train."""


def _lines(numbers: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:MAX_LINES_SHOWN])
    return f"{len(numbers)} line(s): {shown}" + (", ..." if len(numbers) > MAX_LINES_SHOWN else "")


def check_header_and_rows(path: str, separator: str, encoding: str) -> None:
    """The header is ``name:type`` columns and no row has more fields than it.

    Rows are read with pandas' quoting rules (a quoted field may hold the separator); only lines
    with more separators than the header are parsed again, so a clean file costs one pass of
    ``str.count``.
    """
    with open(path, encoding=encoding, newline="") as f:
        header = f.readline().rstrip("\r\n")
        if not header.strip():
            raise AtomicFileError(f"{path}: the file is empty; expected a header line of name:type columns (e.g. user_id:token)")
        columns = header.split(separator)
        malformed = [column for column in columns if column.count(":") != 1]
        if malformed:
            raise AtomicFileError(
                f"{path}: header column(s) {malformed} are not name:type (e.g. item_id:token, timestamp:float); "
                f"field_separator is {separator!r}"
            )
        extra = []
        for number, line in enumerate(f, start=2):
            if line.count(separator) >= len(columns):
                fields = next(csv.reader([line.rstrip("\r\n")], delimiter=separator, quotechar='"'))
                if len(fields) > len(columns):
                    extra.append(number)
    if extra:
        raise AtomicFileError(
            f"{path}: {_lines(extra)} hold more fields than the {len(columns)} columns of the header; "
            "RecBole would read them shifted. Fix or remove these lines"
        )


def check_loaded_feature(
    path: str, frame: pd.DataFrame, float_fields: Sequence[str], float64_fields: Sequence[str], time_field: str | None
) -> None:
    """No blank time (RecBole fills it with the mean), no float beyond float32 (inf) in the
    fields RecBole stores as float32."""
    if time_field in frame and frame[time_field].isna().any():
        lines = (np.flatnonzero(frame[time_field].isna().to_numpy()) + 2).tolist()
        raise AtomicFileError(
            f"{path}: {_lines(lines)} have no {time_field!r} value; RecBole would fill in the column's mean "
            "and reorder those sequences. Give every interaction its time or remove these lines"
        )
    for field in float_fields:
        if field not in frame or field in float64_fields:
            continue
        values = frame[field]
        if values.dtype == object:  # float_seq: arrays per row
            too_large = np.array([bool(np.any(~(np.abs(v) <= FLOAT32_MAX) & ~np.isnan(v))) for v in values])
        else:
            too_large = (~(values.abs() <= FLOAT32_MAX) & values.notna()).to_numpy()
        if too_large.any():
            lines = (np.flatnonzero(too_large) + 2).tolist()
            raise AtomicFileError(
                f"{path}: column {field!r} holds values beyond float32's range (|x| > {FLOAT32_MAX:.3g}) or "
                f"infinite on {_lines(lines)}; RecBole stores it as float32, where they would become inf. "
                "Rescale the column (or leave it out with unload_col)"
            )


def check_interaction_columns(path: str, frame: pd.DataFrame | None, required: dict[str, Any]) -> None:
    """The interaction file holds rows and the columns the dataset needs (``required``: config
    key -> field name)."""
    if frame is None or len(frame) == 0:
        raise AtomicFileError(f"{path}: holds no interactions (a header without rows, or load_col loads no column)")
    for key, field in required.items():
        if field and field not in frame:
            raise AtomicFileError(
                f"{path}: no column {field!r} ({key}) was loaded; found columns {list(frame.columns)}. Add the "
                f"column, or set {key} to the column that holds it (and include it in load_col)"
            )


def check_training_samples(dataset_name: str, splits: Sequence[Any], per_user: np.ndarray | None) -> None:
    """The training split is not empty (RecBole fails with ``num_samples=0``); ``per_user``
    counts the interactions of each user id (id 0 is padding) before the split."""
    if splits and len(splits[0]) == 0:
        counts = per_user[1:] if per_user is not None else np.zeros(0, dtype=np.int64)
        most = int(counts.max()) if len(counts) else 0
        raise AtomicFileError(
            f"dataset {dataset_name}: no training sample after filtering and splitting ({int(counts.sum())} "
            f"interactions of {len(counts)} users, at most {most} per user); a sequential model needs users "
            "with at least 2 interactions (3 with a validation and a test item). Check the .inter file, "
            "eval_args and the filters (user_inter_num_interval, ...)"
        )
