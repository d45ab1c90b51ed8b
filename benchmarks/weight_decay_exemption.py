"""Does MMM4Rec validate better when weight decay spares its biases, norms and A_log, dt_bias, D?

    .venv/bin/python benchmarks/weight_decay_exemption.py [--epochs 10] [--seed 2020] [--weight_decay 5e-3] [--key=value ...]

MMM4Rec at the demo sizes (properties/quick_start/demo.yaml) on ml-100k-mm, from scratch, with
weight decay ``--weight_decay`` (the paper's 5e-3) on every parameter, and with
``weight_decay_exempt: True`` (see recbole_mmm4rec/trainer.py for the rule). Both runs use the
same seed, hence the same initial weights, split and batch order, and train ``--epochs`` epochs
without early stopping, validated after each. Further ``--key=value`` arguments go to both runs
(e.g. ``--learning_rate=0.0001``). Writes validation NDCG@10 per epoch into BENCHMARKS.md and the
raw records to benchmarks/results/weight_decay_exemption.json. The better variant is the one to
keep as the default of MMM4Rec's stage YAMLs (properties/pretrain, properties/finetune).
"""
from __future__ import annotations

import argparse
import os
import sys

from report import ROOT, machine, markdown_table, replace_section, write_results

DEMO_YAML = os.path.join(ROOT, "properties", "quick_start", "demo.yaml")
METRIC = "ndcg@10"
EVERY, EXEMPT = "every parameter decays", "exempt"
VARIANTS = {EVERY: False, EXEMPT: True}


def train(exempt: bool, args: argparse.Namespace, overrides: list[str]) -> dict:
    from recbole_mmm4rec import run_recbole

    settings = {
        "weight_decay": args.weight_decay,
        "weight_decay_exempt": exempt,
        "seed": args.seed,
        "epochs": args.epochs,
        "stopping_step": args.epochs,  # every run trains all epochs: the curves have equal lengths
        "eval_step": 1,
        "show_progress": False,
    }
    result = run_recbole("MMM4Rec", "ml-100k-mm", [DEMO_YAML], settings, saved=False, cmd_args=overrides)
    return {
        "settings": {**settings, "overrides": overrides},
        "seconds_per_epoch": result["seconds_per_epoch"],
        "train_loss": [record["train_loss"] for record in result["epoch_history"]],
        f"valid_{METRIC}": [record[f"valid_{METRIC}"] for record in result["epoch_history"]],
    }


def report(results: dict, command: str) -> str:
    every, exempt = (results[name][f"valid_{METRIC}"] for name in (EVERY, EXEMPT))
    rows = [[epoch + 1, f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"] for epoch, (a, b) in enumerate(zip(every, exempt))]
    return (
        f"`{command}` on {machine()}; MMM4Rec with properties/quick_start/demo.yaml and the command's settings, weight decay "
        f"{results[EVERY]['settings']['weight_decay']:g}, same seed, no early stopping.\n\n"
        + markdown_table(["epoch", f"valid NDCG@10, {EVERY}", f"valid NDCG@10, {EXEMPT}", "exempt - every"], rows)
        + f"\n\nBest validation NDCG@10: {max(every):.4f} (epoch {every.index(max(every)) + 1}) when every "
        f"parameter decays, {max(exempt):.4f} (epoch {exempt.index(max(exempt)) + 1}) with the exemption "
        f"({max(exempt) / max(every) - 1:+.1%})."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--weight_decay", type=float, default=5e-3)
    args, overrides = parser.parse_known_args()
    malformed = [arg for arg in overrides if not arg.startswith("--") or "=" not in arg]
    if malformed:
        parser.error(f"settings for both runs are --key=value, found {malformed}")
    from recbole_mmm4rec.allocator import keep_freed_memory

    keep_freed_memory()
    results = {}
    for name, exempt in VARIANTS.items():
        results[name] = train(exempt, args, overrides)
        print(name, results[name], flush=True)
    write_results("weight_decay_exemption", results)
    command = "python benchmarks/weight_decay_exemption.py " + " ".join(sys.argv[1:])
    replace_section("weight_decay_exemption", "Weight-decay exemption: MMM4Rec on ml-100k-mm", report(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
