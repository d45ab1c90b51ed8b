"""Reading and writing RecBole atomic files (``.inter``, ``.item``) the way RecBole reads them.

RecBole parses atomic files with ``pandas.read_csv(sep="\\t")``: a header of ``name:type``
columns, then one row per line. Text that starts with a quote would be taken as a quoted field,
so values are written with CSV quoting (a value holding a tab or a quote is quoted, its quotes
doubled): pandas, and :func:`read_atomic_rows`, read back exactly what was written.
"""
from __future__ import annotations

import csv
import io
from typing import Iterable, Iterator, Sequence

from recbole_mmm4rec.data.features import atomic_write

_DIALECT = {"delimiter": "\t", "quotechar": '"', "quoting": csv.QUOTE_MINIMAL, "lineterminator": "\n"}
_ROWS_PER_WRITE = 10_000


def write_atomic_file(path: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> int:
    """Write ``header`` (``name:type`` columns) and ``rows`` atomically; returns the row count."""
    count = 0

    def write(binary) -> None:
        nonlocal count
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        writer = csv.writer(text, **_DIALECT)
        text.write("\t".join(header) + "\n")
        batch = []
        for row in rows:
            if len(row) != len(header):
                raise ValueError(f"{path}: expected {len(header)} values per row ({header}), got {row!r}")
            batch.append(row)
            if len(batch) == _ROWS_PER_WRITE:
                writer.writerows(batch)
                count += len(batch)
                batch = []
        writer.writerows(batch)
        count += len(batch)
        text.flush()
        text.detach()

    atomic_write(path, write)
    return count


def read_atomic_header(path: str) -> list[str]:
    """The ``name:type`` columns of an atomic file."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.readline().rstrip("\n").split("\t")


def read_atomic_rows(path: str) -> Iterator[list[str]]:
    """The rows of an atomic file after its header, each a list of strings."""
    with open(path, encoding="utf-8", newline="") as f:
        f.readline()
        yield from csv.reader(f, **_DIALECT)


def column_index(path: str, header: Sequence[str], name: str) -> int:
    """Where column ``name`` (``name:type``) sits in ``header``; a clear error when it is absent."""
    names = [column.split(":")[0] for column in header]
    if name not in names:
        raise ValueError(f"{path}: expected a column {name!r}, found columns {names}")
    return names.index(name)
