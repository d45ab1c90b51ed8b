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
3. Per target and model, with seed 2020 only: **zero-shot** (``epochs: 0``) from each of the
   ``--checkpoints``, without ID (MMM4Rec ``use_item_id: False``; UniSRec ``inductive_ft``);
   RecBole's ``Pop``; and fine-tuning from the last checkpoint at each of the
   ``--finetune_learning_rates``: the best validation NDCG@10 chooses the learning rate.
4. Per target and model, 3 other seeds (2021-2023, so that no run that chose the learning rate is
   also one of its measures): **from scratch** and **fine-tuned from each checkpoint** at the
   chosen learning rate, early stopping on validation NDCG@10.
5. Per target, seed 2020, read on validation (``--skip_diagnostics`` skips it): MMM4Rec from
   scratch and fine-tuned from the last checkpoint without its per-item ID tables, and fine-tuned
   with the pre-trained sequence layers frozen, beside from scratch with ID.

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
import os
import sys
from typing import Any

from report import HERE, ROOT, machine, markdown_table, replace_section, write_text

from recbole_mmm4rec.benchmark import Variant, execute, ratio_cell, run_benchmark, split_warning, stat_cell

DEMO_YAML = os.path.join(ROOT, "properties", "quick_start", "demo.yaml")
OUTPUT = os.path.join(HERE, "results", "transfer")
CHECKPOINTS = os.path.join(OUTPUT, "checkpoints")
RUNS = os.path.join(OUTPUT, "runs")
STUDY_JSON = os.path.join(OUTPUT, "study.json")
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
# properties/finetune/MMM4Rec.yaml steps NAdam every 8 micro-batches (the paper's 8 x 1,024) with
# weight decay 5e-3: on a target of ~125 k training targets that is 8 steps per epoch, against
# from scratch's 61. Fine-tuning steps once per batch without weight decay, as from scratch does:
# the two differ by their start and their learning rate (from scratch keeps the models' 1e-3, the
# grid's largest). UniSRec's fine-tuning keeps its recipe's frozen encoder.
FINE_TUNING = {"accumulation_steps": 1, "weight_decay": 0.0, "weight_decay_exempt": False}
# RecBole's Pop is a general model, whose default split is random 8:1:1: it gets the sequential
# models' leave-one-out split by time. RecBole still masks each user's training items from a
# general model's ranking (not from a sequential model's), which favours Pop. `Pop` is this
# package's (model/pop.py): RecBole's own counts an item once per batch.
POP = {"eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"}}
# Early stopping's patience on every target run: it stops after this many epochs plus one without
# a better validation NDCG@10.
STOPPING_STEP = 5
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
        os.makedirs(os.path.dirname(job["history_file"]), exist_ok=True)

        def record(epoch: dict) -> None:
            with open(job["history_file"], "a", encoding="utf-8") as out:
                out.write(json.dumps(plain_value(epoch)) + "\n")

        result = run_pretrain(job["model"], [SOURCE], [DEMO_YAML], job["config_dict"], epoch_callback=record)
        sender.send(("done", plain_value(result)))
    except BaseException as error:
        sender.send(("failed", f"{type(error).__name__}: {error}"))


def pretrain_settings(model: str, settings: dict, epochs: int) -> dict:
    """``run_pretrain``'s settings for ``model``: a checkpoint after every epoch, in CHECKPOINTS."""
    return {**settings, "epochs": epochs, "save_step": 1, "checkpoint_dir": CHECKPOINTS, "show_progress": False}


def checkpoint_name_pattern(model: str, settings: dict) -> str:
    """The path of ``model``'s pre-training checkpoints, ``{}`` standing for the epochs done."""
    from recbole_mmm4rec.pretrain import checkpoint_pattern, pretrain_config

    return checkpoint_pattern(pretrain_config(model, [SOURCE], [DEMO_YAML], pretrain_settings(model, settings, 1)))


def history_file(pattern: str) -> str:
    """Where each pre-training epoch's record (loss, seconds) is appended, resumed runs included:
    named by the checkpoints' settings hash, so other settings never share it."""
    return os.path.join(OUTPUT, "pretraining", os.path.basename(pattern).replace("-{}.pth", ".jsonl"))


def pretrain_history(pattern: str) -> list[dict]:
    """The records of :func:`history_file`, one per epoch (a repeated epoch: its latest record)."""
    records = {}
    if os.path.isfile(history_file(pattern)):
        with open(history_file(pattern), encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                records[record["epoch"]] = record
    return [records[epoch] for epoch in sorted(records)]


def choose_pretraining(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Step 1: the MMM4Rec pre-training settings of the best held-out source validation."""
    variants = [Variant(label=name, model="MMM4Rec", settings=tuple({**PRETRAIN_LOSS, **values}.items()))
                for name, values in PRETRAIN_CANDIDATES.items()]
    result = run_benchmark(SOURCE, variants, seeds=[FIRST_SEED], config_file_list=[DEMO_YAML],
                           config_dict=PRETRAIN_CHECK_RUN, output_dir=os.path.join(OUTPUT, "pretraining_check"),
                           runs_dir=RUNS, workers=args.workers, threads_per_run=1, progress=False,
                           report_only=args.report_only)
    unfinished = [row["label"] + (f" ({'; '.join(row['errors'])})" if row["errors"] else " (not run)")
                  for row in result.summary if "values" not in row]
    if unfinished:
        raise RuntimeError(f"step 1 (pre-training settings) has no result for {unfinished}: run "
                           "benchmarks/transfer.py without --report_only")
    rows = [{"label": row["label"], "valid_ndcg@10": row["best_valid_score"][0], "epochs_to_best": row["epochs_to_best"][0],
             "s_per_epoch": row["seconds_per_epoch"][0]} for row in result.summary]
    best = max(rows, key=lambda row: row["valid_ndcg@10"])
    return {**PRETRAIN_LOSS, **PRETRAIN_CANDIDATES[best["label"]]}, rows


def pretrain(pretrainings: dict[str, tuple[str, dict, str]], epochs: int, workers: int) -> None:
    """Step 2: each of ``pretrainings`` (key -> model, settings, checkpoint pattern) whose last
    checkpoint is missing pre-trained at once, each in its own process (a finished one would only
    rebuild its dataset to train no epoch)."""
    jobs = [{"key": key, "label": key, "seed": FIRST_SEED, "model": model, "threads": 1,
             "config_dict": pretrain_settings(model, settings, epochs), "history_file": history_file(pattern)}
            for key, (model, settings, pattern) in pretrainings.items() if not os.path.isfile(pattern.format(epochs))]
    outcomes = execute(jobs, workers=workers, progress=False, worker=pretrain_worker)
    failed = {key: outcome["error"] for key, outcome in outcomes.items() if "error" in outcome}
    if failed:
        raise RuntimeError(f"pre-training failed: {failed}")


def variant(model: str, label: str, settings: dict, pretrained: str | None = None, scratch: str | None = None) -> Variant:
    """A row of the study: ``model`` with its MODEL_SETTINGS, then ``settings``."""
    return Variant(label=label, model=model, settings=tuple({**MODEL_SETTINGS.get(model, {}), **settings}.items()),
                   pretrained=pretrained, scratch_label=scratch)


def epochs_text(epochs: int) -> str:
    return f"{epochs} pre-training epoch{'s' if epochs > 1 else ''}"


def scratch_label(model: str) -> str:
    return f"{model} from scratch"


def zero_shot_label(model: str, epochs: int) -> str:
    return f"{model} zero-shot from {epochs_text(epochs)}"


def fine_tuned_label(model: str, epochs: int, learning_rate: float) -> str:
    return f"{model} fine-tuned from {epochs_text(epochs)}, lr {learning_rate:g}"


def choose_learning_rate(summary: list[dict], model: str, epochs: int, rates: list[float]) -> float | str:
    """The grid's learning rate of the best validation NDCG@10, or why there is none yet."""
    rows = {rate: next(row for row in summary if row["label"] == fine_tuned_label(model, epochs, rate)) for rate in rates}
    failed = [f"{rate:g}" for rate, row in rows.items() if row["errors"]]
    if failed:
        return f"none: the grid's runs at lr {', '.join(failed)} failed"
    if any("values" not in row for row in rows.values()):
        return "none yet: the grid is not finished"
    return max(rates, key=lambda rate: rows[rate]["best_valid_score"][0])


def study_target(args: argparse.Namespace, target: str, checkpoints: dict[str, dict[int, str]]) -> dict[str, Any]:
    """Steps 3 and 4 on one target: the summary rows and runs, and the chosen learning rates."""
    common = dict(config_file_list=[DEMO_YAML], config_dict={"epochs": args.epochs, "stopping_step": STOPPING_STEP}, runs_dir=RUNS,
                  workers=args.workers, threads_per_run=1, progress=False, report_only=args.report_only)
    last = max(args.checkpoints)
    rates = [float(rate) for rate in args.finetune_learning_rates.split(",")]
    first = [variant("Pop", "Pop", POP)]
    for model in MODELS:
        first += [variant(model, zero_shot_label(model, epochs), ZERO_SHOT[model], checkpoints[model][epochs])
                  for epochs in args.checkpoints]
        first += [variant(model, fine_tuned_label(model, last, rate), {**FINE_TUNING, "learning_rate": rate},
                          checkpoints[model][last]) for rate in rates]
    first_run = run_benchmark(target, first, seeds=[FIRST_SEED], output_dir=os.path.join(OUTPUT, target, "seed2020"), **common)
    chosen = {model: choose_learning_rate(first_run.summary, model, last, rates) for model in MODELS}
    curves = []
    for model in MODELS:
        curves.append(variant(model, scratch_label(model), {}))
        if isinstance(chosen[model], float):
            curves += [variant(model, fine_tuned_label(model, epochs, chosen[model]), {**FINE_TUNING, "learning_rate": chosen[model]},
                               checkpoints[model][epochs], scratch_label(model)) for epochs in args.curve_checkpoints]
    seeds = [FIRST_SEED + 1 + offset for offset in range(args.seeds)]
    curve_run = run_benchmark(target, curves, seeds=seeds, output_dir=os.path.join(OUTPUT, target, "curves"), **common)
    why = []
    if isinstance(chosen["MMM4Rec"], float) and not args.skip_diagnostics:
        why = [variant("MMM4Rec", scratch_label("MMM4Rec"), {})]
        why += [variant("MMM4Rec", label, settings, checkpoints["MMM4Rec"][last] if pretrained else None)
                for label, settings, pretrained in diagnostic_runs(last, chosen["MMM4Rec"])]
    why_run = run_benchmark(target, why, seeds=[FIRST_SEED], output_dir=os.path.join(OUTPUT, target, "diagnostics"), **common) if why else None
    return {"target": target, "chosen_learning_rate": chosen, "curve_seeds": seeds,
            "first": first_run.summary, "curves": curve_run.summary,
            "curve_runs": [run for run in curve_run.runs if "test_result" in run],
            "diagnostics": why_run.summary if why_run else []}


def diagnostic_runs(last: int, learning_rate: float) -> list[tuple[str, dict, bool]]:
    """Step 5, seed 2020, read on validation: what holds MMM4Rec's fine-tuning back. The per-item
    ID tables start at zero on a new catalogue whatever the checkpoint, so fine-tuning without
    them shows how much of from scratch's epochs they take; freezing the pre-trained sequence
    layers shows whether what they learnt on the source helps as it is. (label, settings, from
    the last checkpoint)."""
    start = f"from {epochs_text(last)}, lr {learning_rate:g}"
    tuned = {**FINE_TUNING, "learning_rate": learning_rate}
    return [("MMM4Rec from scratch without ID", {"use_item_id": False}, False),
            (f"MMM4Rec fine-tuned without ID {start}", {**tuned, "use_item_id": False}, True),
            (f"MMM4Rec fine-tuned {start}, sequence layers frozen", {**tuned, "freeze": ["layers"]}, True)]


def plot_curves(study: dict, path: str, checkpoint_epochs: list[int], curve_epochs: list[int]) -> None:
    """Validation NDCG@10 per epoch: one panel per model, a line per seed (from scratch black, each
    checkpoint its colour), each checkpoint's zero-shot score at epoch 0 in its colour, Pop dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(MODELS), figsize=(7 * len(MODELS), 4.5), sharey=True)
    palette = plt.get_cmap("viridis")
    color_of = {epochs: palette(0.1 + 0.75 * index / max(len(checkpoint_epochs) - 1, 1))
                for index, epochs in enumerate(checkpoint_epochs)}
    first = {row["label"]: row for row in study["first"] if "values" in row}
    for axes, model in zip(panels, MODELS):
        lines = [(scratch_label(model), "black")]
        if isinstance(study["chosen_learning_rate"][model], float):
            lines += [(fine_tuned_label(model, epochs, study["chosen_learning_rate"][model]), color_of[epochs])
                      for epochs in curve_epochs]
        for label, color in lines:
            for number, run in enumerate(r for r in study["curve_runs"] if r["label"] == label):
                points = [(r["epoch"] + 1, r["valid_ndcg@10"]) for r in run["epoch_history"] if "valid_ndcg@10" in r]
                if points:
                    axes.plot(*zip(*points), color=color, alpha=0.75, marker=".", label=label if number == 0 else None)
        for epochs in checkpoint_epochs:
            row = first.get(zero_shot_label(model, epochs))
            if row:
                axes.plot(0, row["best_valid_score"][0], marker="D", color=color_of[epochs], linestyle="none", label=row["label"])
        if "Pop" in first:
            axes.axhline(first["Pop"]["best_valid_score"][0], color="grey", linestyle="--", label="Pop")
        axes.set(title=f"{model} on {study['target']}", xlabel="epoch (0: zero-shot)", ylabel="validation NDCG@10")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


RUN_COLUMNS = ["run", "seeds", "test NDCG@10", "test Hit@10", "valid NDCG@10", "epochs to best", "s to best", "s/epoch"]


def summary_cells(row: dict, seconds: bool = True) -> list[str]:
    """Seeds, test NDCG@10 and Hit@10, valid NDCG@10, epochs to best, s to best, s/epoch."""
    if "values" not in row:
        return ["0", "; ".join(row["errors"]) or "not run", *[""] * 5]
    return [str(len(row["seeds"])), stat_cell(row["test_ndcg@10"]), stat_cell(row["test_hit@10"]),
            stat_cell(row["best_valid_score"]), stat_cell(row["epochs_to_best"], 1),
            stat_cell(row["seconds_to_best"], 0) if seconds else "", stat_cell(row["seconds_per_epoch"], 1)]


def first_epoch_reaching(run: dict, score: float) -> int | None:
    """The first epoch (1-based) whose validation NDCG@10 is at least ``score``; None if none is."""
    return next((record["epoch"] + 1 for record in run["epoch_history"] if record.get("valid_ndcg@10", -1.0) >= score), None)


def epochs_to_scratch_best(study: dict, row: dict) -> str:
    """The time-to-quality cell of a fine-tuned row: the mean epochs its runs take to reach the
    best validation NDCG@10 of the from-scratch run of the same seed, against the mean epochs
    that those from-scratch runs took to reach it; the seeds that never reach it are counted apart."""
    runs = {(run["label"], run["seed"]): run for run in study["curve_runs"]}
    pairs, seeds = [], 0
    for seed in row["seeds"]:
        scratch = runs.get((row["scratch_label"], seed))
        if scratch is not None:
            seeds += 1
            epoch = first_epoch_reaching(runs[(row["label"], seed)], scratch["best_valid_score"])
            pairs += [] if epoch is None else [(epoch, scratch["best_epoch"] + 1)]
    if not pairs:
        return "never" if seeds else ""
    tuned, scratch = (sum(values) / len(pairs) for values in zip(*pairs))
    return f"{tuned:.1f} against {scratch:.1f} ({tuned / scratch:.2f}x)" + (
        f"; {seeds - len(pairs)} of {seeds} seeds never" if len(pairs) < seeds else "")


def censored_runs(runs: list[dict]) -> list[str]:
    """The runs that ended at the epoch limit before early stopping could end them (their epochs
    to best are a lower bound), as ``label, seed N``."""
    return [f"{run['label']}, seed {run['seed']} (best at epoch {run['best_epoch'] + 1} of {run['epochs_trained']})"
            for run in runs if run["epochs_trained"] > 0 and run["epochs_trained"] - 1 - run["best_epoch"] <= STOPPING_STEP]


def target_report(study: dict) -> str:
    """The target's table (zero-shot and Pop with seed 2020; the curves' 3 seeds), the learning-rate grid, the plot."""
    columns = [*RUN_COLUMNS, "vs from scratch: test NDCG@10 (Welch p), epochs to best",
               "epochs to reach from scratch's best valid NDCG@10, against from scratch's"]
    rows = [[row["label"], *summary_cells(row, seconds=False), "", ""] for row in study["first"]
            if row["label"] == "Pop" or "zero-shot" in row["label"]]
    for row in study["curves"]:
        versus = (ratio_cell(row["ratio_to_scratch"], row["p_value_to_scratch"]) + f", {row['epochs_to_best_ratio_to_scratch']:.2f}x"
                  if "ratio_to_scratch" in row else "")
        rows.append([row["label"], *summary_cells(row), versus,
                     epochs_to_scratch_best(study, row) if row.get("scratch_label") and "values" in row else ""])
    grid = [[row["label"], *summary_cells(row)] for row in study["first"] if "fine-tuned" in row["label"]]
    chosen = ", ".join(f"{model} {rate:g}" if isinstance(rate, float) else f"{model} {rate}"
                       for model, rate in study["chosen_learning_rate"].items())
    warning = split_warning(study["first"])
    censored = censored_runs(study["curve_runs"])
    return (
        f"### Target `{study['target']}`\n\n"
        f"Zero-shot rows and Pop: seed {FIRST_SEED} (nothing trains, s to best does not apply; Pop, a general model, "
        "has each user's training items masked from its ranking, the sequential models do not); the other rows: seeds "
        f"{', '.join(map(str, study['curve_seeds']))}.\n\n"
        + markdown_table(columns, rows)
        + "\n\nRuns that reached the epoch limit still improving (their epochs to best are censored): "
        + ("; ".join(censored) if censored else "none") + "."
        + (f"\n\n{warning}" if warning else "")
        + f"\n\nFine-tuning learning rate (seed {FIRST_SEED}, from the last checkpoint; the best validation NDCG@10 "
        f"chooses: {chosen}):\n\n"
        + markdown_table(RUN_COLUMNS, grid)
        + f"\n\n![validation NDCG@10 per epoch]({os.path.relpath(study['plot'], ROOT)})\n"
        + (f"\nWhat holds MMM4Rec's fine-tuning back (seed {FIRST_SEED}; read on validation):\n\n"
           + markdown_table(RUN_COLUMNS,
                            [[row["label"], *summary_cells(row)] for row in study["diagnostics"]]) + "\n"
           if study.get("diagnostics") else "")
    )


def pretraining_cells(history: list[dict]) -> list:
    """Epochs, mean s/epoch and the training loss after a few epochs of a pre-training history."""
    losses = [record["train_loss"] for record in history]
    marks = ", ".join(f"{epoch}: {losses[epoch - 1]:.1f}" for epoch in sorted({1, 2, 5, 10, 15, 20, len(losses)})
                      if 1 <= epoch <= len(losses))
    seconds = [record["train_seconds"] for record in history]
    return [len(losses), f"{sum(seconds) / len(seconds):.0f}" if seconds else "", marks or "no records"]


def report(results: dict, command: str) -> str:
    """The BENCHMARKS.md section: step 1's choice, the pre-training curves, each target's report."""
    check = markdown_table(["MMM4Rec pre-training settings (5 epochs on the source's train split)", "source valid NDCG@10",
                            "epochs to best", "s/epoch"],
                           [[row["label"], f"{row['valid_ndcg@10']:.4f}", row["epochs_to_best"], f"{row['s_per_epoch']:.0f}"]
                            for row in results["pretraining_check"]])
    pre_rows = [[model, *pretraining_cells(info["history"]),
                 ", ".join(f"`{os.path.basename(file)}`" for file in info["checkpoints"].values())]
                for model, info in results["pretraining"].items()]
    return (
        f"`{command}` on {machine()}; every run one torch thread, {results['workers']} at a time, demo sizes "
        "(properties/quick_start/demo.yaml: hidden 64, L = 20).\n\n"
        f"Source `{SOURCE}`; settings chosen on its own validation split:\n\n{check}\n\n"
        "Pre-training (in-batch cross-entropy, sequence mode, every source interaction a target once per epoch; "
        "the loss is the sum of the batch losses of an epoch):\n\n"
        + markdown_table(["model", "epochs", "s/epoch", "training loss after epoch", "checkpoints used"], pre_rows)
        + "\n\n" + "\n".join(target_report(study) for study in results["targets"])
    )


def run_study(args: argparse.Namespace) -> dict:
    """Steps 1 to 5: the results that study.json keeps."""
    chosen, check_rows = choose_pretraining(args)
    settings = {"MMM4Rec": chosen, "UniSRec": {**MODEL_SETTINGS["UniSRec"], **UNISREC_PRETRAINING}}
    patterns = {model: checkpoint_name_pattern(model, settings[model]) for model in MODELS}
    if not args.report_only:
        pretrain({model: (model, settings[model], patterns[model]) for model in MODELS}, args.pretrain_epochs, args.workers)
    checkpoints = {model: {epochs: pattern.format(epochs) for epochs in args.checkpoints} for model, pattern in patterns.items()}
    missing = [file for files in checkpoints.values() for file in files.values() if not os.path.isfile(file)]
    if missing:
        raise FileNotFoundError(f"pre-training checkpoints missing: {missing}; run benchmarks/transfer.py without "
                                f"--report_only, with --pretrain_epochs {max(args.checkpoints)} at least (or "
                                "--from_study_json for the last run's report)")
    results = {"command": ("python benchmarks/transfer.py " + " ".join(sys.argv[1:])).strip(), "workers": args.workers,
               "checkpoints": args.checkpoints, "curve_checkpoints": args.curve_checkpoints, "pretraining_check": check_rows, "targets": [],
               "pretraining": {model: {"settings": settings[model], "checkpoints": checkpoints[model],
                                       "history": pretrain_history(patterns[model])} for model in MODELS}}
    for target in args.targets.split(","):
        results["targets"].append(study_target(args, target, checkpoints))
        write_text(STUDY_JSON, json.dumps(results, indent=1, default=str) + "\n")
    return results


def stored_results() -> dict:
    """The study as its last run wrote it (``study.json``)."""
    if not os.path.isfile(STUDY_JSON):
        raise FileNotFoundError(f"no {STUDY_JSON}: run benchmarks/transfer.py without --from_study_json")
    with open(STUDY_JSON, encoding="utf-8") as f:
        return json.load(f)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="ml-1m-mm-since1997", help="comma-separated target datasets")
    parser.add_argument("--pretrain_epochs", type=int, default=20)
    parser.add_argument("--checkpoints", default="1,5,20", help="pre-training epochs whose checkpoints are fine-tuned")
    parser.add_argument("--curve_checkpoints", default=None,
                        help="the checkpoints fine-tuned with the curves' seeds (default: all of --checkpoints)")
    parser.add_argument("--finetune_learning_rates", default="0.0001,0.0003,0.001")
    parser.add_argument("--epochs", type=int, default=100,
                        help="epoch limit of every target run (patience 5 ends them; at 40, many peaked at 35-40)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="runs at once, each with one torch thread")
    parser.add_argument("--skip_diagnostics", action="store_true", help="skip step 5 (MMM4Rec without ID, frozen layers)")
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing: write the report of the finished runs (the pre-training must be done)")
    parser.add_argument("--from_study_json", action="store_true",
                        help="train and look up nothing: rewrite the report and plots from study.json, as the last "
                             "run left it (in a checkout without its pre-training checkpoints, which the run keys hash)")
    args = parser.parse_args()
    args.checkpoints = sorted(int(epoch) for epoch in args.checkpoints.split(","))
    args.curve_checkpoints = (sorted(int(epoch) for epoch in args.curve_checkpoints.split(","))
                              if args.curve_checkpoints else args.checkpoints)
    if not set(args.curve_checkpoints) <= set(args.checkpoints):
        parser.error(f"--curve_checkpoints {args.curve_checkpoints} must be among --checkpoints {args.checkpoints}")
    if max(args.checkpoints) > args.pretrain_epochs:
        parser.error(f"--checkpoints {args.checkpoints} goes beyond --pretrain_epochs {args.pretrain_epochs}")

    if args.from_study_json:
        results = stored_results()
    else:
        results = run_study(args)
    for study in results["targets"]:
        study["plot"] = os.path.join(OUTPUT, study["target"], "fine_tuning_curves.png")
        plot_curves(study, study["plot"], results["checkpoints"], results["curve_checkpoints"])
    replace_section("transfer_study", "Transfer study: long pre-training, disjoint-item target, zero-shot, fine-tuning curves",
                    report(results, results["command"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
