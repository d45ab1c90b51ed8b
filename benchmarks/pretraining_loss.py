"""Does the pre-training loss decide zero-shot? MMM4Rec pre-trained with a full softmax.

    .venv/bin/python benchmarks/pretraining_loss.py [--pretrain_epochs 10] [--workers 2] [--report_only]

The transfer study (benchmarks/transfer.py) pre-trains with in-batch cross-entropy, whose
negatives are the batch's targets, drawn in proportion to popularity: the scores it learns have
popularity divided out (benchmarks/zero_shot_popularity.py), and its zero-shot MMM4Rec stays far
below Pop on the disjoint-item target. This pre-trains MMM4Rec on the same source with the
study's settings (step 1's choice, read from ``results/transfer/study.json``) but
``ce_candidates: all``, a softmax over every source item, which keeps popularity in the scores;
with the per-item ID tables (where source popularity can settle, and they are never transferred)
and without them. Then on the target, seed 2020: zero-shot (features only) from each of the
``--checkpoints``, on validation and test, beside Pop; fine-tuning from the last checkpoint at
the study's chosen learning rate; and MMM4Rec from scratch, read on validation. Everything else
is the study's: split, evaluator, early stopping, fine-tuning settings. Writes BENCHMARKS.md's
``pretraining_loss`` section and ``results/transfer/pretraining_loss/results.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from report import machine, markdown_table, replace_section, write_text
from transfer import (DEMO_YAML, FINE_TUNING, FIRST_SEED, OUTPUT, POP, RUN_COLUMNS, RUNS, STUDY_JSON, ZERO_SHOT,
                      checkpoint_name_pattern, epochs_text, pretrain, pretrain_history, pretraining_cells, scratch_label,
                      stored_results, summary_cells, variant)

from recbole_mmm4rec.benchmark import run_benchmark, split_warning

RESULTS = os.path.join(OUTPUT, "pretraining_loss")
# The pre-training losses compared; the study's in-batch one is in its own table.
LOSSES = {
    "full softmax, with ID": {"ce_candidates": "all"},
    "full softmax, without ID": {"ce_candidates": "all", "use_item_id": False},
}


def study_settings() -> tuple[dict, float]:
    """The transfer study's MMM4Rec pre-training settings and chosen fine-tuning learning rate."""
    study = stored_results()
    rate = study["targets"][0]["chosen_learning_rate"]["MMM4Rec"]
    if not isinstance(rate, float):
        raise ValueError(f"{STUDY_JSON}: the study chose no MMM4Rec fine-tuning learning rate yet ({rate})")
    return study["pretraining"]["MMM4Rec"]["settings"], rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="ml-1m-mm-since1997")
    parser.add_argument("--pretrain_epochs", type=int, default=10)
    parser.add_argument("--checkpoints", default="1,5,10", help="pre-training epochs evaluated zero-shot")
    parser.add_argument("--epochs", type=int, default=40, help="epoch limit of the training runs, as in the study")
    parser.add_argument("--workers", type=int, default=2, help="runs at once, each with one torch thread")
    parser.add_argument("--report_only", action="store_true", help="train nothing: report the finished runs")
    args = parser.parse_args()
    checkpoints = sorted(int(epoch) for epoch in args.checkpoints.split(","))
    if max(checkpoints) > args.pretrain_epochs:
        parser.error(f"--checkpoints {checkpoints} goes beyond --pretrain_epochs {args.pretrain_epochs}")

    base, rate = study_settings()
    settings = {loss: {**base, **change} for loss, change in LOSSES.items()}
    patterns = {loss: checkpoint_name_pattern("MMM4Rec", values) for loss, values in settings.items()}
    if not args.report_only:
        pretrain({loss: ("MMM4Rec", settings[loss], pattern) for loss, pattern in patterns.items()}, args.pretrain_epochs,
                 args.workers)
    missing = [pattern.format(epochs) for pattern in patterns.values() for epochs in checkpoints
               if not os.path.isfile(pattern.format(epochs))]
    if missing:
        raise FileNotFoundError(f"pre-training checkpoints missing: {missing}; run without --report_only")

    last = max(checkpoints)
    variants = [variant("Pop", "Pop", POP), variant("MMM4Rec", scratch_label("MMM4Rec"), {})]
    for loss, pattern in patterns.items():
        variants += [variant("MMM4Rec", f"MMM4Rec zero-shot, {loss}, {epochs_text(epochs)}", ZERO_SHOT["MMM4Rec"],
                             pattern.format(epochs)) for epochs in checkpoints]
        variants.append(variant("MMM4Rec", f"MMM4Rec fine-tuned, {loss}, {epochs_text(last)}, lr {rate:g}",
                                {**FINE_TUNING, "learning_rate": rate}, pattern.format(last)))
    result = run_benchmark(args.target, variants, seeds=[FIRST_SEED], config_file_list=[DEMO_YAML],
                           config_dict={"epochs": args.epochs, "stopping_step": 5}, runs_dir=RUNS,
                           output_dir=os.path.join(RESULTS, args.target), workers=args.workers, threads_per_run=1,
                           progress=False, report_only=args.report_only)
    history = {loss: pretrain_history(pattern) for loss, pattern in patterns.items()}
    write_text(os.path.join(RESULTS, "results.json"),
               json.dumps({"settings": settings, "history": history, "summary": result.summary}, indent=1, default=str) + "\n")

    losses = [[loss, *pretraining_cells(records)] for loss, records in history.items()]
    rows = [[row["label"], *summary_cells(row, seconds="zero-shot" not in row["label"] and row["label"] != "Pop")]
            for row in result.summary]
    warning = split_warning(result.summary)
    # The command that trains the runs: --report_only rewrites the same report.
    command = "python benchmarks/pretraining_loss.py " + " ".join(arg for arg in sys.argv[1:] if arg != "--report_only")
    replace_section(
        "pretraining_loss", "Does the pre-training loss decide zero-shot? MMM4Rec pre-trained with a full softmax",
        f"`{command.strip()}` on {machine()}; every run one torch thread, {args.workers} at a time, demo sizes "
        f"(properties/quick_start/demo.yaml: hidden 64, L = 20); source `ml-1m-mm-before1997`, the transfer study's "
        f"pre-training settings but the loss; target `{args.target}`, seed {FIRST_SEED}.\n\n"
        "Pre-training (the loss is the sum of the batch losses of an epoch; a full softmax's and an in-batch one's "
        "are not on one scale):\n\n"
        + markdown_table(["loss", "epochs", "s/epoch", "training loss after epoch"], losses)
        + "\n\nOn the target (Pop has each user's training items masked, the sequential models do not):\n\n"
        + markdown_table(RUN_COLUMNS, rows) + (f"\n\n{warning}" if warning else "") + "\n",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
