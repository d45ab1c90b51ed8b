"""MMM4Rec and SASRec trained to early stopping on ml-100k-mm, same split, evaluator and patience.

    .venv/bin/python benchmarks/convergence.py [--models MMM4Rec,SASRec] [--epochs 50]

Uses properties/quick_start/demo.yaml (the `make demo` sizes) with more epochs, so that early
stopping (stopping_step) ends each run. Writes the results table into BENCHMARKS.md between
this benchmark's markers, and the raw results to benchmarks/results/convergence.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from recbole_mmm4rec.data import atomic_write

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BEGIN, END = "<!-- convergence:begin -->", "<!-- convergence:end -->"


def write_text(path: str, text: str) -> None:
    """Through a temporary file renamed into place: never a half-written results file."""
    atomic_write(path, lambda out: out.write(text.encode("utf-8")))


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " + (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    )


def table(results: dict[str, dict], command: str) -> str:
    lines = [
        BEGIN,
        f"`{command}` on {machine()}.",
        "",
        "| model | trainable parameters | s/epoch | epochs run | best epoch (1-based) | valid NDCG@10 | test Hit@10 | test NDCG@10 | test Hit@20 | test NDCG@20 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        test = r["test_result"]
        lines.append(
            f"| {name} | {r['parameters']:,} | {r['seconds_per_epoch']:.1f} | {r['epochs_trained']} | "
            f"{r['best_epoch'] + 1} | {r['best_valid_result']['ndcg@10']:.4f} | {test['hit@10']:.4f} | "
            f"{test['ndcg@10']:.4f} | {test['hit@20']:.4f} | {test['ndcg@20']:.4f} |"
        )
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="MMM4Rec,SASRec")
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()
    from recbole_mmm4rec import run_recbole

    results = {}
    for model in args.models.split(","):
        result = run_recbole(
            model=model,
            dataset="ml-100k-mm",
            config_file_list=[os.path.join(ROOT, "properties", "quick_start", "demo.yaml")],
            config_dict={"epochs": args.epochs, "show_progress": False},
        )
        results[model] = {k: v for k, v in result.items() if k != "saved_model_file"}
        results[model]["best_valid_result"] = dict(result["best_valid_result"])
        results[model]["test_result"] = dict(result["test_result"])
        print(model, json.dumps(results[model]), flush=True)

    write_text(os.path.join(HERE, "results", "convergence.json"), json.dumps(results, indent=2))
    command = "python benchmarks/convergence.py " + " ".join(sys.argv[1:])
    benchmarks_md = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(benchmarks_md, encoding="utf-8").read() if os.path.exists(benchmarks_md) else "# Benchmarks\n"
    block = table(results, command.strip())
    if BEGIN in text:
        text = text.split(BEGIN)[0] + block + text.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## MMM4Rec vs SASRec to early stopping on ml-100k-mm\n\n" + block + "\n"
    write_text(benchmarks_md, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
