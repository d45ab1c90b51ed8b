"""Reading raw dataset files line by line, counting the lines that cannot be used.

A raw dump of millions of lines always has a few bad ones (cut JSON, a missing field, text
that is not UTF-8); each is counted with its reason and a few are kept as examples, and the
rest of the file is read on. Gzip is recognised by its magic bytes, so ``x.json`` and
``x.json.gz`` both work.
"""
from __future__ import annotations

import ast
import gzip
import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")
GZIP_MAGIC = b"\x1f\x8b"
MAX_EXAMPLES = 10
MAX_REASON_CHARS = 200  # a reason quotes the bad value, which may be huge


class MalformedLine(ValueError):
    """A raw line that cannot be used; the message is the reason reported."""


@dataclass
class LineReport:
    """What reading one raw file found: lines read, lines skipped as malformed and why."""

    path: str
    lines: int = 0
    malformed: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def record_malformed(self, line_number: int, reason: str) -> None:
        self.malformed += 1
        if len(self.examples) < MAX_EXAMPLES:
            shown = reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS] + "..."
            self.examples.append({"line": line_number, "reason": shown})


def _open_binary(path: str):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")


def parsed_lines(path: str, parse: Callable[[str], T], report: LineReport) -> Iterator[T]:
    """``parse(line)`` for every non-blank line of ``path``; lines for which it raises (a
    :class:`MalformedLine`, or any other error: a value of an unexpected type, JSON nested too
    deeply, text that is not UTF-8) are counted in ``report`` with the reason and skipped.

    A gzip file that ends early (an interrupted download) is an error: reading it on would
    silently build a dataset from part of the data.
    """
    with _open_binary(path) as f:
        line_number = 0
        try:
            for line_number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                report.lines += 1
                try:
                    yield parse(raw.decode("utf-8"))
                except UnicodeDecodeError as error:
                    report.record_malformed(line_number, f"not UTF-8 ({error.reason} at byte {error.start})")
                except MalformedLine as error:
                    report.record_malformed(line_number, str(error))
                except Exception as error:  # one odd line of millions must not end the run
                    report.record_malformed(line_number, f"{type(error).__name__}: {error}")
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise ValueError(
                f"{path}: the compressed file is cut or damaged after line {line_number} ({error}); "
                "download it again"
            ) from error


def json_object(line: str) -> dict[str, Any]:
    """One JSON object per line; older Amazon dumps hold Python dict literals (single quotes)."""
    line = line.strip()
    try:
        value = json.loads(line)
    except json.JSONDecodeError as json_error:
        try:
            value = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise MalformedLine(f"neither JSON nor a Python literal (JSON: {json_error})") from None
    if not isinstance(value, dict):
        raise MalformedLine(f"expected an object, found {type(value).__name__}")
    return value


def required_text(record: dict[str, Any], key: str) -> str:
    """A non-empty string field of a raw record, or :class:`MalformedLine` naming it."""
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MalformedLine(f"missing or empty field {key!r}")
    return value.strip()
