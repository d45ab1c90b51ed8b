"""The transfer demo: MMM4Rec pre-trained on ml-1m-mm, fine-tuned on ml-100k-mm, against from scratch.

    .venv/bin/python benchmarks/transfer.py [--pretrain_epochs 2] [--epochs 50]   (or: make transfer)

1. ``run_pretrain --model=MMM4Rec --datasets=ml-1m-mm``: in-batch cross-entropy on every
   interaction of MovieLens-1M (6,040 users of 2000-2003), properties/quick_start/demo.yaml sizes.
   A re-run resumes the pre-training from its last checkpoint.
2. ``run_recbole --model=MMM4Rec --dataset=ml-100k-mm --pretrained=<checkpoint>``: the paper's
   fine-tuning settings (properties/finetune/MMM4Rec.yaml) to early stopping.
3. The same model from scratch, same split, evaluator and early stopping.

Writes the table (epochs to best validation, s/epoch, test metrics) and both validation curves
into BENCHMARKS.md, and the raw results to benchmarks/results/transfer.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from report import ROOT, machine, markdown_table, replace_section, write_results

DEMO_YAML = os.path.join(ROOT, "properties", "quick_start", "demo.yaml")
METRICS = ("hit@10", "ndcg@10", "hit@20", "ndcg@20")


def summary(result: dict) -> dict:
    keep = ("parameters", "epochs_trained", "best_epoch", "seconds_per_epoch", "epoch_history_file", "transfer_report")
    return {
        **{k: result[k] for k in keep},
        "best_valid_result": dict(result["best_valid_result"]),
        "test_result": dict(result["test_result"]),
        "valid_ndcg@10": [r.get("valid_ndcg@10") for r in result["epoch_history"]],
    }


def report(results: dict, command: str) -> str:
    pre = results["pretrain"]
    columns = ["run", "epochs to best validation", "epochs run", "s/epoch", "valid NDCG@10", *(f"test {m.replace('hit', 'Hit').replace('ndcg', 'NDCG')}" for m in METRICS)]
    rows = []
    for name in ("fine-tuned from ml-1m-mm", "from scratch"):
        r = results[name]
        rows.append([name, r["best_epoch"] + 1, r["epochs_trained"], f"{r['seconds_per_epoch']:.1f}",
                     f"{r['best_valid_result']['ndcg@10']:.4f}", *(f"{r['test_result'][m]:.4f}" for m in METRICS)])
    tuned, scratch = results["fine-tuned from ml-1m-mm"], results["from scratch"]
    epochs = max(len(tuned["valid_ndcg@10"]), len(scratch["valid_ndcg@10"]))
    curve = [[e + 1, *(f"{r['valid_ndcg@10'][e]:.4f}" if e < len(r["valid_ndcg@10"]) else "" for r in (tuned, scratch))]
             for e in range(epochs)]
    ratio = (tuned["best_epoch"] + 1) / (scratch["best_epoch"] + 1)
    return (
        f"`{command}` on {machine()}.\n\n"
        f"Pre-training: {pre['epochs_done']} epochs of in-batch cross-entropy on ml-1m-mm "
        f"({pre['seconds_per_epoch']:.0f} s/epoch in this run{', resumed' if pre['resumed_from'] else ''}), "
        f"checkpoint `{os.path.basename(pre['checkpoint'])}`. Fine-tuning loads every transferable tensor "
        f"({tuned['transfer_report'].splitlines()[0].rstrip(':')}; the per-item bias tables stay at their zero start).\n\n"
        + markdown_table(columns, rows)
        + f"\n\nEpochs to best validation, fine-tuned / from scratch: **{ratio:.2f}** (target at most 0.20); "
        f"test NDCG@10 {tuned['test_result']['ndcg@10']:.4f} against {scratch['test_result']['ndcg@10']:.4f}.\n\n"
        "Validation NDCG@10 per epoch:\n\n"
        + markdown_table(["epoch", "fine-tuned", "from scratch"], curve)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain_epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=50, help="fine-tuning and from-scratch epoch limit (early stopping ends them)")
    args = parser.parse_args()
    from recbole_mmm4rec import run_recbole
    from recbole_mmm4rec.allocator import keep_freed_memory
    from recbole_mmm4rec.pretrain import run_pretrain

    keep_freed_memory()
    shared = {"show_progress": False}
    pre = run_pretrain("MMM4Rec", ["ml-1m-mm"], [DEMO_YAML], {**shared, "epochs": args.pretrain_epochs})
    results = {"pretrain": {**pre, "epochs_done": args.pretrain_epochs}}
    print("pretrain", json.dumps(results["pretrain"]), flush=True)
    runs = {
        "fine-tuned from ml-1m-mm": {"pretrained": pre["checkpoint"]},
        "from scratch": {},
    }
    for name, settings in runs.items():
        result = run_recbole("MMM4Rec", "ml-100k-mm", [DEMO_YAML], {**shared, "epochs": args.epochs, **settings})
        results[name] = summary(result)
        print(name, json.dumps(results[name]), flush=True)

    write_results("transfer", results)
    command = "python benchmarks/transfer.py " + " ".join(sys.argv[1:])
    replace_section("transfer", "Transfer: ml-1m-mm pre-training, ml-100k-mm fine-tuning", report(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
