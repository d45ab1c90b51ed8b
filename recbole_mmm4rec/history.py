"""Per-epoch training loss, validation metrics and wall time of every run, as CSV and JSON.

RecBole only logs these as text. :func:`recording_trainer` adds a record per epoch to any
RecBole trainer; the records are rewritten (temporary file, then rename) after every epoch, so a
convergence plot can be drawn while a run goes on or after it was interrupted.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
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


class _EpochRecordingMixin:
    """Collects one record per epoch around RecBole's ``_train_epoch`` and ``_valid_epoch``.

    An epoch's record is complete after its validation, or, when the epoch is not validated
    (``eval_step``, no validation data, pre-training), when the next epoch or :meth:`fit` ends.
    """

    epoch_callback: EpochCallback | None = None

    def __init__(self, config, model):
        super().__init__(config, model)
        self.epoch_history = EpochHistory(history_stem(config))
        self._pending_record = None

    def fit(self, *args, **kwargs):
        self._fit_started = time.perf_counter()
        try:
            return super().fit(*args, **kwargs)
        finally:
            self._flush_record()

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        self._flush_record()
        started = time.perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self._pending_record = {
            "epoch": epoch_idx,
            "train_loss": float(sum(loss) if isinstance(loss, tuple) else loss),
            "train_seconds": round(time.perf_counter() - started, 3),
        }
        return loss

    def _valid_epoch(self, valid_data, *args, **kwargs):
        started = time.perf_counter()
        valid_score, valid_result = super()._valid_epoch(valid_data, *args, **kwargs)
        record = self._pending_record or {}
        record["valid_seconds"] = round(time.perf_counter() - started, 3)
        record["valid_score"] = float(valid_score)
        record.update({f"valid_{metric}": float(value) for metric, value in valid_result.items()})
        self._pending_record = record
        self._flush_record()
        return valid_score, valid_result

    def _flush_record(self) -> None:
        record, self._pending_record = self._pending_record, None
        if record is None:
            return
        record["elapsed_seconds"] = round(time.perf_counter() - self._fit_started, 3)
        self.epoch_history.add(record)
        if self.epoch_callback is not None:
            self.epoch_callback(record)


_RECORDING_TRAINERS: dict[type, type] = {}


def recording_trainer(trainer_class: type) -> type:
    """``trainer_class`` that keeps an :class:`EpochHistory` (``trainer.epoch_history``) beside
    the run's log, and calls ``trainer.epoch_callback`` (if set) with each finished record.

    Trainers without RecBole's epoch loop are returned unchanged.
    """
    from recbole.trainer import Trainer

    if not issubclass(trainer_class, Trainer):
        return trainer_class
    if trainer_class not in _RECORDING_TRAINERS:
        _RECORDING_TRAINERS[trainer_class] = type(
            trainer_class.__name__, (_EpochRecordingMixin, trainer_class), {}
        )
    return _RECORDING_TRAINERS[trainer_class]


def history_stem(config) -> str | None:
    """Where a run's epoch records go: beside its log file, on the process of rank 0 only."""
    log_file = run_log_file()
    if log_file is None or config["local_rank"] not in (0, None):
        return None
    return os.path.splitext(log_file)[0]
