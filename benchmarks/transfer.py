"""The transfer demo: MMM4Rec pre-trained on ml-1m-mm, fine-tuned on ml-100k-mm, against from scratch.

    .venv/bin/python benchmarks/transfer.py [--pretrain_epochs 1] [--epochs 50] [--finetune_learning_rates 0.0001,0.001]
    (or: make transfer)

1. ``run_pretrain --model=MMM4Rec --datasets=ml-1m-mm``: in-batch cross-entropy on every
   interaction of MovieLens-1M (6,040 users of 2000-2003), properties/quick_start/demo.yaml sizes.
   A re-run resumes the pre-training from its last checkpoint.
2. ``run_recbole --model=MMM4Rec --dataset=ml-100k-mm --pretrained=<checkpoint>``: the paper's
   fine-tuning settings (properties/finetune/MMM4Rec.yaml) to early stopping, once per
   fine-tuning learning rate asked for (the paper's 1e-4 by default).
3. The same model from scratch, same split, evaluator and early stopping.

Writes the table (epochs to best validation, s/epoch, test metrics) and the validation curves
into BENCHMARKS.md, and the raw results to benchmarks/results/transfer.json; a re-run reuses the
finished runs of the same settings found there.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from report import HERE, ROOT, machine, markdown_table, replace_section, write_results

DEMO_YAML = os.path.join(ROOT, "properties", "quick_start", "demo.yaml")
METRICS = ("hit@10", "ndcg@10", "hit@20", "ndcg@20")


def summary(result: dict, settings: dict) -> dict:
    keep = ("parameters", "epochs_trained", "best_epoch", "seconds_per_epoch", "epoch_history_file", "transfer_report")
    return {
        "settings": settings,
        **{k: result[k] for k in keep},
        "best_valid_result": dict(result["best_valid_result"]),
        "test_result": dict(result["test_result"]),
        "valid_ndcg@10": [r.get("valid_ndcg@10") for r in result["epoch_history"]],
    }


def report(results: dict, command: str) -> str:
    pre = results["pretrain"]
    runs = {name: r for name, r in results.items() if name != "pretrain"}
    scratch = runs[SCRATCH]
    columns = ["run", "epochs to best validation", "epochs run", "s/epoch", "valid NDCG@10",
               *(f"test {m.replace('hit', 'Hit').replace('ndcg', 'NDCG')}" for m in METRICS),
               "epochs to best / from scratch"]
    rows = [[name, r["best_epoch"] + 1, r["epochs_trained"], f"{r['seconds_per_epoch']:.1f}",
             f"{r['best_valid_result']['ndcg@10']:.4f}", *(f"{r['test_result'][m]:.4f}" for m in METRICS),
             f"{(r['best_epoch'] + 1) / (scratch['best_epoch'] + 1):.2f}"] for name, r in runs.items()]
    epochs = max(len(r["valid_ndcg@10"]) for r in runs.values())
    curve = [[e + 1, *(f"{r['valid_ndcg@10'][e]:.4f}" if e < len(r["valid_ndcg@10"]) else "" for r in runs.values())]
             for e in range(epochs)]
    tuned = runs[FINE_TUNED.format(lr=FINE_TUNE_YAML_LR)]
    return (
        f"`{command}` on {machine()}.\n\n"
        f"Pre-training: {pre['epochs_done']} epoch(s) of in-batch cross-entropy on ml-1m-mm "
        f"({pre['seconds_per_epoch']:.0f} s/epoch), checkpoint `{os.path.basename(pre['checkpoint'])}`. "
        f"Fine-tuning loads every transferable tensor ({tuned['transfer_report'].splitlines()[0].rstrip(':')}; "
        "the per-item bias tables start at zero as from scratch). Target: epochs to best at most 0.20 of "
        "from scratch, with test NDCG@10 at least as high.\n\n"
        + markdown_table(columns, rows)
        + "\n\nValidation NDCG@10 per epoch:\n\n"
        + markdown_table(["epoch", *runs], curve)
    )


SCRATCH = "from scratch"
FINE_TUNED = "fine-tuned from ml-1m-mm, lr {lr:g}"
FINE_TUNE_YAML_LR = 1e-4  # properties/finetune/MMM4Rec.yaml, the paper's


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain_epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=50, help="fine-tuning and from-scratch epoch limit (early stopping ends them)")
    parser.add_argument("--finetune_learning_rates", default=f"{FINE_TUNE_YAML_LR:g}",
                        help="comma-separated, one fine-tuning run each (default: the paper's 1e-4)")
    args = parser.parse_args()
    from recbole_mmm4rec import run_recbole
    from recbole_mmm4rec.allocator import keep_freed_memory
    from recbole_mmm4rec.pretrain import run_pretrain

    keep_freed_memory()
    shared = {"show_progress": False}
    # A re-run resumes the pre-training from its checkpoint and reuses every finished run of the
    # same settings from benchmarks/results/transfer.json.
    saved = os.path.join(HERE, "results", "transfer.json")
    previous = json.load(open(saved)) if os.path.exists(saved) else {}
    pre = run_pretrain("MMM4Rec", ["ml-1m-mm"], [DEMO_YAML], {**shared, "epochs": args.pretrain_epochs})
    if pre["epochs_trained"] == 0 and previous.get("pretrain", {}).get("checkpoint") == pre["checkpoint"]:
        pre = previous["pretrain"]  # finished before: keep the figures of the run that trained it
    results = {"pretrain": {**pre, "epochs_done": args.pretrain_epochs}}
    print("pretrain", json.dumps(results["pretrain"]), flush=True)
    runs = {FINE_TUNED.format(lr=float(lr)): {"pretrained": os.path.basename(pre["checkpoint"]), "learning_rate": float(lr)}
            for lr in args.finetune_learning_rates.split(",")}
    runs[SCRATCH] = {}
    for name, settings in runs.items():
        settings = {**settings, "epochs": args.epochs}
        if previous.get(name, {}).get("settings") == settings:
            results[name] = previous[name]
        else:
            overrides = {**settings, "pretrained": pre["checkpoint"]} if "pretrained" in settings else settings
            results[name] = summary(run_recbole("MMM4Rec", "ml-100k-mm", [DEMO_YAML], {**shared, **overrides}), settings)
            write_results("transfer", {**previous, **results})
        print(name, json.dumps(results[name]), flush=True)

    write_results("transfer", results)
    command = "python benchmarks/transfer.py " + " ".join(sys.argv[1:])
    replace_section("transfer", "Transfer: ml-1m-mm pre-training, ml-100k-mm fine-tuning", report(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
