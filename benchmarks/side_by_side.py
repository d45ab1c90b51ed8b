"""MMM4Rec beside RecBole's baselines and UniSRec on ml-100k-mm, from scratch and after ml-1m-mm
pre-training, and MMM4Rec's ablations: ``run_benchmark`` three times, with the tables and plots
put into BENCHMARKS.md.

    .venv/bin/python benchmarks/side_by_side.py [--seeds 3] [--ablation_seeds 2020,] [--transfer_seeds 3] [--workers 2]

1. From scratch (one ``run_benchmark`` command), properties/quick_start/demo.yaml sizes
   (hidden 64, L=20), Hit/NDCG@10/20/50, up to ``--epochs`` epochs with demo.yaml's early
   stopping (``stopping_step: 3``: a run ends at the 4th evaluation without a better validation
   NDCG@10):
   MMM4Rec (its default ``train_mode: sequence``, and with RecBole's prefix rows), with and
   without its per-item ID tables; SASRec; GRU4Rec at RecBole's defaults and
   at learning rate 0.01 (at 1e-3 it stays on its first plateau until early stopping); UniSRec.
2. Ablations, read on the validation split: MMM4Rec without its time channel, without the shared
   TiSSD block, without the Fourier filter, and at the learning rate and dropout that the
   validation-only ``run_hyper`` search of BENCHMARKS.md chose, each for ``--ablation_epochs``
   epochs, beside the full model and the no-ID runs of step 1 (reused). The learning rate is
   constant, so a capped run's epochs are the first epochs of an uncapped one.
3. Pre-training: ``run_pretrain`` of MMM4Rec and of UniSRec on ml-1m-mm at the same sizes
   (``--pretrain_epochs``; a re-run resumes from the checkpoints).
4. Transfer (the third ``run_benchmark``): each fine-tuned from its checkpoint with its
   properties/finetune YAML, beside its from-scratch runs, reused from step 1 (shared runs folder).

Every finished run is kept in benchmarks/results/side_by_side/runs: a re-run only trains what is
missing (e.g. more seeds).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from report import HERE, ROOT, machine, replace_section

DEMO_YAML = os.path.join(ROOT, "properties", "quick_start", "demo.yaml")
OUTPUT = os.path.join(HERE, "results", "side_by_side")
SCRATCH_MODELS = "MMM4Rec,MMM4Rec[train_mode=prefix],MMM4Rec[use_item_id=False],SASRec,GRU4Rec,GRU4Rec[learning_rate=0.01],UniSRec"
# The last one is not an ablation: the lr and dropout the validation-only run_hyper search chose.
ABLATIONS = ("time_channel=False", "share_tissd=False", "fourier_filter=False", "learning_rate=0.003, dropout_prob=0.15")
TRANSFER_MODELS = ("MMM4Rec", "UniSRec")


def section(result, command: str, intro: str, workers: int) -> str:
    folder = os.path.relpath(result.output_dir, ROOT)
    return (
        f"`{command}` on {machine()}; each run in its own process with one torch thread, "
        f"{workers} at a time.\n\n{intro}\n\n{result.table}\n\n"
        f"Raw runs: `{folder}/results.json`.\n\n"
        f"![validation NDCG@10 per epoch]({folder}/valid_curves.png)\n"
        f"![test NDCG@10 against time to the best epoch]({folder}/quality_vs_time.png)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="3", help="from scratch: a count or a comma list (run_benchmark's --seeds)")
    parser.add_argument("--ablation_seeds", default="2020,", help="ablation seeds (run_benchmark's --seeds)")
    parser.add_argument("--ablation_epochs", type=int, default=6, help="epoch limit of the ablated variants")
    parser.add_argument("--transfer_seeds", default="3", help="fine-tuning seeds")
    parser.add_argument("--epochs", type=int, default=30, help="epoch limit; early stopping ends the runs before")
    parser.add_argument("--pretrain_epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip_transfer", action="store_true")
    parser.add_argument("--report_only", action="store_true", help="train nothing: tables from the finished runs")
    args = parser.parse_args()
    from recbole_mmm4rec.benchmark import run_benchmark
    from recbole_mmm4rec.pretrain import latest_checkpoint, pretrain_config, run_pretrain

    command = ("python benchmarks/side_by_side.py " + shlex.join(sys.argv[1:])).strip()
    shared = dict(dataset="ml-100k-mm", config_file_list=[DEMO_YAML], config_dict={"epochs": args.epochs, "topk": [10, 20, 50]},
                  runs_dir=os.path.join(OUTPUT, "runs"), workers=args.workers, threads_per_run=1, report_only=args.report_only)
    scratch = run_benchmark(models=SCRATCH_MODELS, seeds=args.seeds, output_dir=os.path.join(OUTPUT, "ml-100k-mm"), **shared)
    replace_section(
        "side_by_side", "MMM4Rec beside SASRec, GRU4Rec and UniSRec on ml-100k-mm (run_benchmark)",
        section(scratch, command, "Mean ± sample std over seeds; the last column is the ratio of "
                "mean test NDCG@10 to the best variant of another model, with Welch's t-test p-value.", args.workers),
    )
    ablated = ",".join(f"MMM4Rec[{setting}, epochs={args.ablation_epochs}]" for setting in ABLATIONS)
    ablations = run_benchmark(models=f"MMM4Rec,MMM4Rec[use_item_id=False],{ablated}", seeds=args.ablation_seeds,
                              output_dir=os.path.join(OUTPUT, "ml-100k-mm-ablations"), **shared)
    replace_section(
        "side_by_side_ablations", "MMM4Rec's ablations on ml-100k-mm (run_benchmark)",
        section(ablations, command, f"Read the validation column and curves: the ablated variants stop "
                f"after {args.ablation_epochs} epochs, the full model and the no-ID variant are their uncapped "
                "runs of the table above, with the same seeds.", args.workers),
    )
    if args.skip_transfer:
        return 0

    checkpoints = {}
    for model in TRANSFER_MODELS:
        settings = {"epochs": args.pretrain_epochs, "show_progress": False}
        if args.report_only:
            checkpoints[model] = latest_checkpoint(pretrain_config(model, ["ml-1m-mm"], [DEMO_YAML], settings))
        else:
            checkpoints[model] = run_pretrain(model, ["ml-1m-mm"], [DEMO_YAML], settings)["checkpoint"]
    transfer = run_benchmark(models=",".join(TRANSFER_MODELS), pretrained=checkpoints, seeds=args.transfer_seeds,
                             output_dir=os.path.join(OUTPUT, "ml-100k-mm-transfer"), **shared)
    names = ", ".join(f"`{os.path.basename(path)}`" for path in checkpoints.values())
    replace_section(
        "side_by_side_transfer", "Transfer: ml-1m-mm pre-trained MMM4Rec and UniSRec fine-tuned on ml-100k-mm (run_benchmark)",
        section(transfer, command, f"Checkpoints: {names} ({args.pretrain_epochs} pre-training epoch(s) "
                "on ml-1m-mm each, demo sizes); the from-scratch rows are the runs of the table above.", args.workers),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
