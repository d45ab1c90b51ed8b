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
import sys

from report import ROOT, machine, markdown_table, replace_section, write_results


def table(results: dict[str, dict], command: str) -> str:
    columns = ["model", "trainable parameters", "s/epoch", "epochs run", "best epoch (1-based)", "valid NDCG@10",
               "test Hit@10", "test NDCG@10", "test Hit@20", "test NDCG@20"]
    rows = []
    for name, r in results.items():
        test = r["test_result"]
        rows.append([
            name, f"{r['parameters']:,}", f"{r['seconds_per_epoch']:.1f}", r["epochs_trained"], r["best_epoch"] + 1,
            f"{r['best_valid_result']['ndcg@10']:.4f}",
            *(f"{test[metric]:.4f}" for metric in ("hit@10", "ndcg@10", "hit@20", "ndcg@20")),
        ])
    return f"`{command}` on {machine()}.\n\n" + markdown_table(columns, rows)


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

    write_results("convergence", results)
    command = "python benchmarks/convergence.py " + " ".join(sys.argv[1:])
    replace_section("convergence", "MMM4Rec vs SASRec to early stopping on ml-100k-mm", table(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
