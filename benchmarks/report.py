"""What every benchmark shares: the machine's description and its section of BENCHMARKS.md."""
from __future__ import annotations

import json
import os
import platform

import torch

from recbole_mmm4rec.data import atomic_write

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")


def write_text(path: str, text: str) -> None:
    """Through a temporary file renamed into place: never a half-written results file."""
    atomic_write(path, lambda out: out.write(text.encode("utf-8")))


def write_results(name: str, results) -> None:
    """Raw results as benchmarks/results/<name>.json."""
    write_text(os.path.join(HERE, "results", f"{name}.json"), json.dumps(results, indent=2) + "\n")


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " + (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    )


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """A Markdown table of already formatted cells."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def replace_section(name: str, heading: str, body: str) -> None:
    """Put ``body`` between the ``<!-- name:begin/end -->`` markers of BENCHMARKS.md, or append
    it under ``heading`` the first time."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = open(BENCHMARKS_MD, encoding="utf-8").read() if os.path.exists(BENCHMARKS_MD) else "# Benchmarks\n"
    if begin in text:
        text = text.split(begin)[0] + block + text.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{block}\n"
    write_text(BENCHMARKS_MD, text)
