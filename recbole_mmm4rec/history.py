"""Per-epoch training loss, validation metrics and wall time of every run, as CSV and JSON.

RecBole only logs these as text. Every plugin trainer (:mod:`recbole_mmm4rec.trainer`) adds a
record per epoch to an :class:`EpochHistory`; the records are rewritten (temporary file, then
rename) after every epoch, so a convergence plot can be drawn while a run goes on or after it was
interrupted.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Callable

from recbole_mmm4rec.data.features import atomic_write
from recbole_mmm4rec.run_logging import run_log_file

EpochCallback = Callable[[dict[str, Any]], None]


class EpochHistory:
    """Records ``{"epoch", "train_loss", "train_seconds", "valid_seconds", "elapsed_seconds",
    "valid_score", "valid_<metric>"...}`` and writes them to ``<stem>.epochs.csv`` and
    ``<stem>.epochs.json`` (no files when ``stem`` is None)."""

    def __init__(self, stem: str | None):
        self.records: list[dict[str, Any]] = []
        self.csv_path = f"{stem}.epochs.csv" if stem else None
        self.json_path = f"{stem}.epochs.json" if stem else None

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.csv_path:
            self._write()

    def _write(self) -> None:
        columns = list(dict.fromkeys(key for record in self.records for key in record))
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write(self.csv_path, lambda f: f.write(table.getvalue().encode("utf-8")))
        text = json.dumps(self.records, indent=1)
        atomic_write(self.json_path, lambda f: f.write(text.encode("utf-8")))


def history_stem(config) -> str | None:
    """Where a run's epoch records go: beside its log file, on the process of rank 0 only."""
    log_file = run_log_file()
    if log_file is None or config["local_rank"] not in (0, None):
        return None
    return os.path.splitext(log_file)[0]
