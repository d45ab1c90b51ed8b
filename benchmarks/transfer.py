"""The transfer study: pre-training long enough to matter, a target with items the source never
saw, zero-shot evaluation and fine-tuning curves, for MMM4Rec and UniSRec.

    .venv/bin/python benchmarks/transfer.py [--targets ml-1m-mm-since1997,ml-100k-mm] [--workers 2]
    (or: make transfer)

Source: ``ml-1m-mm-before1997`` (even-numbered MovieLens-1M users, movies released before 1997).
Targets: ``ml-1m-mm-since1997`` (odd-numbered users, movies of 1997-2000: no item and no user in
common with the source) and, when asked, ``ml-100k-mm`` (other users, most of its movies in the
source). Demo sizes (properties/quick_start/demo.yaml, hidden 64) throughout: at the paper's sizes
one pre-training epoch costs about 4x more on these 2 cores (BENCHMARKS, sequence-mode training).

1. **Pre-training settings, on held-out source data.** MMM4Rec trained on the source with the
   pre-training loss (in-batch cross-entropy, 1,024-target batches) for 5 epochs at the paper's
   8 x 1,024 targets per NAdam step at 2.5e-4, and at one batch per step at 1e-3; the better
   validation NDCG@10 of the source's own leave-one-out split chooses. Nothing looks at a target.
2. **Pre-training** (``run_pretrain``, ``train_mode: sequence``, every source interaction) of both
   models for ``--pretrain_epochs``, a checkpoint kept after every epoch. UniSRec: its recipe's
   Adam at 1e-3 with the same 1,024-target batches.
3. Per target and model, with seed 2020: **zero-shot** (``epochs: 0``) from each of the
   ``--checkpoints``, without ID (MMM4Rec ``use_item_id: False``; UniSRec ``inductive_ft``);
   RecBole's ``Pop``; and fine-tuning from the last checkpoint at each of the
   ``--finetune_learning_rates``: the best validation NDCG@10 chooses the learning rate.
4. Per target and model, 3 seeds: **from scratch** and **fine-tuned from each checkpoint** at
   the chosen learning rate, early stopping on validation NDCG@10.

Every run uses the same split, evaluator and early stopping (``--epochs`` at most, patience 5);
fine-tuning steps the optimiser once per batch, as from scratch does (see ``FINE_TUNING``).
UniSRec trains in sequence mode everywhere (its prefix-mode epochs cost 9x more here).
A re-run reuses every finished run (``benchmarks/results/transfer/runs``) and resumes the
pre-training from its last checkpoint. Writes BENCHMARKS.md's transfer-study section, one
validation-curve plot per target and ``benchmarks/results/transfer/study.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from report import HERE, ROOT, machine, markdown_table, replace_section, write_text

DEMO_YAML = os.path.join(ROOT, "properties", "quick_start", "demo.yaml")
OUTPUT = os.path.join(HERE, "results", "transfer")
CHECKPOINTS = os.path.join(OUTPUT, "checkpoints")
RUNS = os.path.join(OUTPUT, "runs")
SOURCE = "ml-1m-mm-before1997"
MODELS = ("MMM4Rec", "UniSRec")
FIRST_SEED = 2020

# Step 1: the pre-training loss on the source's own train/validation split, 5 epochs each.
PRETRAIN_LOSS = {"ce_candidates": "in_batch", "train_batch_size": 1024, "weight_decay": 0.005, "weight_decay_exempt": True}
PRETRAIN_CANDIDATES = {
    "paper: 8 x 1,024 targets per step, lr 2.5e-4": {"accumulation_steps": 8, "learning_rate": 0.00025},
    "1,024 targets per step, lr 1e-3": {"accumulation_steps": 1, "learning_rate": 0.001},
}
PRETRAIN_CHECK_RUN = {"epochs": 5, "stopping_step": 5}
UNISREC_PRETRAINING = {"learning_rate": 0.001, "accumulation_steps": 1, "train_batch_size": 1024}
# Every model's settings on every dataset of the study.
MODEL_SETTINGS = {"MMM4Rec": {}, "UniSRec": {"train_mode": "sequence"}}
# properties/finetune/MMM4Rec.yaml steps NAdam every 8 micro-batches (the paper's 8 x 1,024):
# on a target of ~125 k training targets that is 8 steps per epoch, against from scratch's 61.
# Fine-tuning steps once per batch, as from scratch does: the two differ by their start only.
FINE_TUNING = {"accumulation_steps": 1}
ZERO_SHOT = {"MMM4Rec": {"epochs": 0, "use_item_id": False}, "UniSRec": {"epochs": 0, "train_stage": "inductive_ft"}}


def pretrain_worker(job: dict, sender) -> None:
    """One model's pre-training in a spawned process (benchmark.execute's worker protocol)."""
    try:
        import torch

        torch.set_num_threads(job["threads"])
        from recbole_mmm4rec.allocator import keep_freed_memory
        from recbole_mmm4rec.config import plain_value
        from recbole_mmm4rec.pretrain import run_pretrain

        keep_freed_memory()
        os.makedirs(os.path.dirname(history_file(job["model"])), exist_ok=True)

        def record(epoch: dict) -> None:
            with open(history_file(job["model"]), "a", encoding="utf-8") as out:
                out.write(json.dumps(plain_value(epoch)) + "\n")

        result = run_pretrain(job["model"], [SOURCE], [DEMO_YAML], job["config_dict"], epoch_callback=record)
        sender.send(("done", plain_value(result)))
    except BaseException as error:
        sender.send(("failed", f"{type(error).__name__}: {error}"))


def checkpoint_files(model: str, settings: dict, epochs: list[int]) -> dict[int, str]:
    """The pre-training checkpoint of ``model`` after each of ``epochs``."""
    from recbole_mmm4rec.pretrain import checkpoint_pattern, pretrain_config

    pattern = checkpoint_pattern(pretrain_config(model, [SOURCE], [DEMO_YAML], settings))
    return {epoch: pattern.format(epoch) for epoch in epochs}


def history_file(model: str) -> str:
    """Where each pre-training epoch's record (loss, seconds) is appended, resumed runs included."""
    return os.path.join(OUTPUT, "pretraining", f"{model}.jsonl")


def pretrain_history(model: str) -> list[dict]:
    """The records of :func:`history_file`, one per epoch (a repeated epoch: its latest record)."""
    records = {}
    if os.path.isfile(history_file(model)):
        for line in open(history_file(model), encoding="utf-8"):
            record = json.loads(line)
            records[record["epoch"]] = record
    return [records[epoch] for epoch in sorted(records)]


def choose_pretraining(args) -> tuple[dict, list[dict]]:
    """Step 1: the MMM4Rec pre-training settings of the best held-out source validation."""
    from recbole_mmm4rec.benchmark import Variant, run_benchmark

    variants = [Variant(label=name, model="MMM4Rec", settings=tuple({**PRETRAIN_LOSS, **values}.items()))
                for name, values in PRETRAIN_CANDIDATES.items()]
    result = run_benchmark(SOURCE, variants, seeds=[FIRST_SEED], config_file_list=[DEMO_YAML],
                           config_dict=PRETRAIN_CHECK_RUN, output_dir=os.path.join(OUTPUT, "pretraining_check"),
                           runs_dir=RUNS, workers=args.workers, threads_per_run=1, progress=False,
                           report_only=args.report_only)
    rows = [{"label": row["label"], "valid_ndcg@10": row["best_valid_score"][0], "epochs_to_best": row["epochs_to_best"][0],
             "s_per_epoch": row["seconds_per_epoch"][0]} for row in result.summary]
    best = max(rows, key=lambda row: row["valid_ndcg@10"])
    return {**PRETRAIN_LOSS, **PRETRAIN_CANDIDATES[best["label"]]}, rows


def pretrain(args, settings: dict[str, dict]) -> None:
    """Step 2: both models pre-trained at once, each in its own process."""
    from recbole_mmm4rec.benchmark import execute

    jobs = []
    for model in MODELS:
        config = {**settings[model], "epochs": args.pretrain_epochs, "save_step": 1, "checkpoint_dir": CHECKPOINTS,
                  "show_progress": False}
        jobs.append({"key": model, "label": model, "seed": FIRST_SEED, "model": model, "threads": 1, "config_dict": config})
    outcomes = execute(jobs, workers=args.workers, progress=False, worker=pretrain_worker)
    failed = {key: outcome["error"] for key, outcome in outcomes.items() if "error" in outcome}
    if failed:
        raise RuntimeError(f"pre-training failed: {failed}")


def variant(model: str, label: str, settings: dict, pretrained: str | None = None, scratch: str | None = None):
    from recbole_mmm4rec.benchmark import Variant

    return Variant(label=label, model=model, settings=tuple({**MODEL_SETTINGS.get(model, {}), **settings}.items()),
                   pretrained=pretrained, scratch_label=scratch)


def scratch_label(model: str) -> str:
    return f"{model} from scratch"


def fine_tuned_label(model: str, epochs: int, learning_rate: float) -> str:
    return f"{model} fine-tuned from {epochs} pre-training epoch{'s' if epochs > 1 else ''}, lr {learning_rate:g}"


def study_target(args, target: str, checkpoints: dict[str, dict[int, str]]) -> dict[str, Any]:
    """Steps 3 and 4 on one target: the runs, the chosen learning rates, the summary rows."""
    from recbole_mmm4rec.benchmark import run_benchmark

    shared = {"epochs": args.epochs, "stopping_step": 5}
    common = dict(config_file_list=[DEMO_YAML], config_dict=shared, runs_dir=RUNS, workers=args.workers,
                  threads_per_run=1, progress=False, report_only=args.report_only)
    last = max(args.checkpoints)
    rates = [float(rate) for rate in args.finetune_learning_rates.split(",")]
    first = [variant("Pop", "Pop", {})]
    for model in MODELS:
        first += [variant(model, f"{model} zero-shot from {epochs} pre-training epochs", ZERO_SHOT[model], checkpoints[model][epochs])
                  for epochs in args.checkpoints]
        first += [variant(model, fine_tuned_label(model, last, rate), {**FINE_TUNING, "learning_rate": rate},
                          checkpoints[model][last]) for rate in rates]
    chosen_run = run_benchmark(target, first, seeds=[FIRST_SEED], output_dir=os.path.join(OUTPUT, target, "seed2020"), **common)
    by_label = {row["label"]: row for row in chosen_run.summary}
    chosen = {}
    for model in MODELS:
        scores = {rate: by_label[fine_tuned_label(model, last, rate)]["best_valid_score"][0]
                  for rate in rates if "best_valid_score" in by_label[fine_tuned_label(model, last, rate)]}
        chosen[model] = max(scores, key=scores.get) if len(scores) == len(rates) else None  # None: the grid is not done
    curves = []
    for model in MODELS:
        curves.append(variant(model, scratch_label(model), {}))
        if chosen[model] is not None:
            curves += [variant(model, fine_tuned_label(model, epochs, chosen[model]), {**FINE_TUNING, "learning_rate": chosen[model]},
                               checkpoints[model][epochs], scratch_label(model)) for epochs in args.checkpoints]
    seeds = [FIRST_SEED + offset for offset in range(args.seeds)]
    curve_run = run_benchmark(target, curves, seeds=seeds, output_dir=os.path.join(OUTPUT, target, "curves"), **common)
    return {"target": target, "chosen_learning_rate": chosen, "first": chosen_run.summary, "curves": curve_run.summary,
            "curve_runs": [run for run in curve_run.runs if "test_result" in run],
            "first_runs": [run for run in chosen_run.runs if "test_result" in run]}


def welch(mine: list[float], theirs: list[float]) -> float:
    from scipy import stats

    return float(stats.ttest_ind(mine, theirs, equal_var=False).pvalue) if min(len(mine), len(theirs)) > 1 else math.nan


def cell(values: list[float], digits: int = 4) -> str:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def plot_curves(study: dict, path: str) -> None:
    """Validation NDCG@10 per epoch: one panel per model, a line per seed, the zero-shot scores at
    epoch 0, Pop dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(MODELS), figsize=(7 * len(MODELS), 4.5), sharey=True)
    colors = plt.get_cmap("viridis")
    first = {row["label"]: row for row in study["first"]}
    pop = first.get("Pop", {}).get("best_valid_score", (math.nan,))[0]
    for axes, model in zip(panels, MODELS):
        labels = [row["label"] for row in study["curves"] if row["model"] == model]
        for index, label in enumerate(labels):
            color = "black" if label == scratch_label(model) else colors(0.15 + 0.7 * index / max(len(labels) - 1, 1))
            for number, run in enumerate(r for r in study["curve_runs"] if r["label"] == label):
                points = [(r["epoch"] + 1, r["valid_ndcg@10"]) for r in run["epoch_history"] if "valid_ndcg@10" in r]
                axes.plot(*zip(*points), color=color, alpha=0.75, marker=".", label=label if number == 0 else None)
        for index, row in enumerate(r for r in study["first"] if r["model"] == model and "zero-shot" in r["label"]):
            axes.plot(0, row["best_valid_score"][0], marker="D", color=colors(0.15 + 0.7 * index / max(len(labels) - 2, 1)),
                      linestyle="none", label=row["label"])
        axes.axhline(pop, color="grey", linestyle="--", label="Pop")
        axes.set(title=f"{model} on {study['target']}", xlabel="epoch (0: zero-shot)", ylabel="validation NDCG@10")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def target_report(study: dict, plot_file: str) -> str:
    first = {row["label"]: row for row in study["first"]}
    curves = {row["label"]: row for row in study["curves"]}
    columns = ["run", "seeds", "test NDCG@10", "test Hit@10", "valid NDCG@10", "epochs to best", "s to best", "s/epoch",
               "test NDCG@10 vs from scratch (p)", "epochs to best vs from scratch"]
    rows = []
    for label, row in {**{k: v for k, v in first.items() if "zero-shot" in k or k == "Pop"}, **curves}.items():
        if "values" not in row:
            rows.append([label, 0, *[""] * 8])
            continue
        values = row["values"]
        scratch = curves.get(row.get("scratch_label") or "", {}).get("values")
        versus = epochs_versus = ""
        if scratch:
            ratio = (sum(values["test_ndcg@10"]) / len(values["test_ndcg@10"])) / (sum(scratch["test_ndcg@10"]) / len(scratch["test_ndcg@10"]))
            versus = f"{ratio:.3f}x (p={welch(values['test_ndcg@10'], scratch['test_ndcg@10']):.3f})"
            epochs_versus = f"{(sum(values['epochs_to_best']) / len(values['epochs_to_best'])) / (sum(scratch['epochs_to_best']) / len(scratch['epochs_to_best'])):.2f}x"
        rows.append([label, len(row["seeds"]), cell(values["test_ndcg@10"]), cell(values["test_hit@10"]),
                     cell(values["best_valid_score"]), cell(values["epochs_to_best"], 1), cell(values["seconds_to_best"], 0),
                     cell(values["seconds_per_epoch"], 1), versus, epochs_versus])
    grid = [[label, cell(row["values"]["best_valid_score"]), cell(row["values"]["epochs_to_best"], 0)]
            for label, row in first.items() if "fine-tuned" in label and "values" in row]
    return (
        f"### Target `{study['target']}`\n\n"
        + markdown_table(columns, rows)
        + "\n\nFine-tuning learning rate (seed 2020, from the last checkpoint; the best validation NDCG@10 chooses: "
        + ", ".join(f"{model} {'not yet (grid not finished)' if rate is None else f'{rate:g}'}"
                    for model, rate in study["chosen_learning_rate"].items()) + "):\n\n"
        + markdown_table(["run", "valid NDCG@10", "epochs to best"], grid)
        + f"\n\n![validation NDCG@10 per epoch]({os.path.relpath(plot_file, ROOT)})\n"
    )


def report(results: dict, command: str) -> str:
    check = markdown_table(["MMM4Rec pre-training settings (5 epochs on the source's train split)", "source valid NDCG@10",
                            "epochs to best", "s/epoch"],
                           [[row["label"], f"{row['valid_ndcg@10']:.4f}", row["epochs_to_best"], f"{row['s_per_epoch']:.0f}"]
                            for row in results["pretraining_check"]])
    pre_rows = []
    for model, info in results["pretraining"].items():
        losses = [record["train_loss"] for record in info["history"]]
        marks = ", ".join(f"{epoch}: {losses[epoch - 1]:.4f}" for epoch in sorted({1, 2, 5, 10, 20, len(losses)}) if epoch <= len(losses))
        seconds = [record["train_seconds"] for record in info["history"]]
        pre_rows.append([model, len(losses), f"{sum(seconds) / max(len(seconds), 1):.0f}", marks,
                         ", ".join(f"`{os.path.basename(file)}`" for file in info["checkpoints"].values())])
    return (
        f"`{command}` on {machine()}; every run one torch thread, {results['workers']} at a time, demo sizes "
        "(properties/quick_start/demo.yaml: hidden 64, L = 20).\n\n"
        f"Source `{SOURCE}`; settings chosen on its own validation split:\n\n{check}\n\n"
        "Pre-training (in-batch cross-entropy, sequence mode, every source interaction a target once per epoch):\n\n"
        + markdown_table(["model", "epochs", "s/epoch", "training loss after epoch", "checkpoints used"], pre_rows)
        + "\n\n" + "\n".join(target_report(study, study["plot"]) for study in results["targets"])
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="ml-1m-mm-since1997", help="comma-separated target datasets")
    parser.add_argument("--pretrain_epochs", type=int, default=20)
    parser.add_argument("--checkpoints", default="1,5,20", help="pre-training epochs whose checkpoints are fine-tuned")
    parser.add_argument("--finetune_learning_rates", default="0.0001,0.0003,0.001")
    parser.add_argument("--epochs", type=int, default=40, help="epoch limit of every target run (early stopping ends most)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="runs at once, each with one torch thread")
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing: write the report of the finished runs (the pre-training must be done)")
    args = parser.parse_args()
    args.checkpoints = sorted(int(epoch) for epoch in args.checkpoints.split(","))
    if max(args.checkpoints) > args.pretrain_epochs:
        parser.error(f"--checkpoints {args.checkpoints} goes beyond --pretrain_epochs {args.pretrain_epochs}")

    chosen, check_rows = choose_pretraining(args)
    settings = {"MMM4Rec": chosen, "UniSRec": {**MODEL_SETTINGS["UniSRec"], **UNISREC_PRETRAINING}}
    if not args.report_only:
        pretrain(args, settings)
    checkpoints = {model: checkpoint_files(model, settings[model], args.checkpoints) for model in MODELS}
    missing = [file for files in checkpoints.values() for file in files.values() if not os.path.isfile(file)]
    if missing:
        raise FileNotFoundError(f"pre-training checkpoints missing (run without --report_only first): {missing}")
    results = {"workers": args.workers, "pretraining_check": check_rows, "pretraining": {}, "targets": []}
    for model in MODELS:
        results["pretraining"][model] = {"settings": settings[model], "checkpoints": checkpoints[model],
                                         "history": pretrain_history(model)}
    for target in args.targets.split(","):
        study = study_target(args, target, checkpoints)
        study["plot"] = os.path.join(OUTPUT, target, "fine_tuning_curves.png")
        plot_curves(study, study["plot"])
        results["targets"].append(study)
        write_text(os.path.join(OUTPUT, "study.json"), json.dumps(results, indent=1, default=str) + "\n")
    command = "python benchmarks/transfer.py " + " ".join(sys.argv[1:])
    replace_section("transfer_study", "Transfer study: long pre-training, disjoint-item target, zero-shot, fine-tuning curves",
                    report(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
