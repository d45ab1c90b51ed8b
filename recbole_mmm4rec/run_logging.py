"""RecBole's per-run log file, made to work for several runs in one process.

RecBole's ``init_logger`` ends in ``logging.basicConfig``, which does nothing once the root
logger has any handler: a second run in the same process (a benchmark, a tuning worker, a test
session) would write into the first run's file, or into none if a library added a handler first.
"""
from __future__ import annotations

import logging

from recbole.utils import init_logger

_RUN_HANDLERS: list[logging.Handler] = []


def init_run_logger(config) -> None:
    """RecBole's console and file logging for this run, replacing the previous run's handlers."""
    root = logging.getLogger()
    for handler in _RUN_HANDLERS:
        root.removeHandler(handler)
        handler.close()
    others = root.handlers[:]
    root.handlers.clear()
    init_logger(config)
    _RUN_HANDLERS[:] = root.handlers
    root.handlers.extend(others)


def run_log_file() -> str | None:
    """The log file of the current run, once :func:`init_run_logger` has set it up."""
    for handler in _RUN_HANDLERS:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None
