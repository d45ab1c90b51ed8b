"""``run_benchmark``: several models side by side on one dataset, several seeds each.

Every run is one ``run_recbole`` call in its own spawned process (its peak memory is its own, and
a crash, even a killed process, ends only that run), with the same config files and overrides,
so every model gets the same split, evaluator and early stopping. A variant is a model name with
optional settings, ``MMM4Rec[use_item_id=False]``; ``pretrained`` adds a fine-tuned variant of a
model beside its from-scratch one.

Each finished run is stored as ``<output>/runs/<model>-seed<seed>-<hash>.json``, the hash naming
its final settings (and the pre-trained file's contents): a re-run of the command, or another
command asking for the same settings under another label, reuses it. A
failed run is reported and retried by the next re-run. The outputs are ``results.json`` (every
run, raw), ``results.md`` (mean and std over seeds) and two plots (``valid_curves.png``: the
validation metric per epoch; ``quality_vs_time.png``: test metric against time to the best epoch).
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import queue
import re
import resource
import time
import traceback
from typing import Any, Sequence

# Where files go and how a run is displayed: not part of what it computes.
LOCATION_KEYS = {
    "checkpoint_dir", "data_path", "show_progress", "state", "verbose", "log_wandb", "wandb_project",
    "pretrained", "dataset_save_path", "dataloaders_save_path",
}
DEFAULT_SETTINGS = {"metrics": ["Hit", "NDCG"], "topk": [10, 20, 50], "valid_metric": "NDCG@10"}


class BenchmarkError(ValueError):
    """A command the benchmark cannot run (bad --models, --pretrained or --seeds)."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """A row of the table: ``model`` with ``settings`` over the shared ones, from ``pretrained``."""

    label: str
    model: str
    settings: tuple[tuple[str, Any], ...] = ()
    pretrained: str | None = None


@dataclasses.dataclass
class BenchmarkResult:
    runs: list[dict]
    summary: list[dict]
    output_dir: str
    table: str


def split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            raise BenchmarkError(f"--models: unbalanced ']' in {text!r}")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if depth:
        raise BenchmarkError(f"--models: unclosed '[' in {text!r}")
    return [part for part in parts + [current.strip()] if part]


def _literal(value: str) -> Any:
    """A Python literal (``3e-4``, ``False``, ``[10, 20]``), else the string, as RecBole reads
    ``--key=value``."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def parse_models(text: str) -> list[Variant]:
    """``"MMM4Rec,MMM4Rec[use_item_id=False],SASRec"`` -> variants; values are Python literals
    or strings (``[hidden_size=128, learning_rate=3e-4, learner=adam]``)."""
    variants = []
    for part in split_top_level(text):
        match = re.fullmatch(r"([A-Za-z_][\w.]*)(?:\[(.*)\])?", part)
        if not match:
            raise BenchmarkError(f"--models: {part!r} is not NAME or NAME[key=value, ...]")
        settings = []
        for assignment in split_top_level(match.group(2) or ""):
            key, equals, value = assignment.partition("=")
            if not equals or not key.strip():
                raise BenchmarkError(f"--models: {assignment!r} in {part!r} is not key=value")
            settings.append((key.strip(), _literal(value.strip())))
        variants.append(Variant(label=part, model=match.group(1), settings=tuple(settings)))
    labels = [variant.label for variant in variants]
    if len(set(labels)) != len(labels):
        raise BenchmarkError(f"--models names a variant twice: {text!r}")
    if not variants:
        raise BenchmarkError("--models is empty: name at least one model, e.g. --models=MMM4Rec,SASRec")
    return variants


def add_pretrained(variants: list[Variant], pretrained: str | dict[str, str] | None) -> list[Variant]:
    """Each from-scratch variant followed by its fine-tuned one when ``pretrained`` names a
    checkpoint for its label or model (``"MMM4Rec=a.pth,UniSRec=b.pth"`` or a dict)."""
    if not pretrained:
        return variants
    if isinstance(pretrained, str):
        pairs = [item.partition("=") for item in pretrained.split(",") if item.strip()]
        if any(not equals for _, equals, _ in pairs):
            raise BenchmarkError(f"--pretrained: expected MODEL=checkpoint.pth[,MODEL=...], found {pretrained!r}")
        pretrained = {name.strip(): path.strip() for name, _, path in pairs}
    used = set()
    result = []
    for variant in variants:
        result.append(variant)
        name = variant.label if variant.label in pretrained else variant.model
        if name in pretrained:
            path = os.path.abspath(pretrained[name])
            if not os.path.isfile(path):
                raise BenchmarkError(f"--pretrained: {name}'s checkpoint {path} does not exist")
            result.append(dataclasses.replace(variant, label=f"{variant.label} (pre-trained)", pretrained=path))
            used.add(name)
    unknown = set(pretrained) - used
    if unknown:
        raise BenchmarkError(f"--pretrained names {sorted(unknown)}, which --models does not list")
    return result


def parse_seeds(seeds: int | str | Sequence[int], base_seed: int) -> list[int]:
    """A count (``3`` or ``"3"``: base_seed, base_seed + 1, base_seed + 2) or a list of seeds
    (``[7]``, ``"1,7,9"``; one seed as a string: ``"7,"``)."""
    if isinstance(seeds, str):
        try:
            values = [int(item) for item in seeds.split(",") if item.strip()]
        except ValueError:
            raise BenchmarkError(f"--seeds: expected a count or a comma list of integers, found {seeds!r}") from None
        seeds = values if "," in seeds else values[0] if values else 0
    if isinstance(seeds, int):
        if seeds < 1:
            raise BenchmarkError(f"--seeds: a count of at least 1, found {seeds}")
        return [base_seed + offset for offset in range(seeds)]
    return list(seeds)


def file_digest(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _run_config_dict(variant: Variant, shared: dict, seed: int, run_dir: str) -> dict:
    config = {**shared, **dict(variant.settings), "seed": seed, "checkpoint_dir": run_dir, "show_progress": False}
    if variant.pretrained:
        config["pretrained"] = variant.pretrained
    return config


def run_identity(variant: Variant, dataset: str, config_files: list[str], shared: dict, cmd_args: Sequence[str],
                 seed: int) -> str:
    """The hash of a run's final settings and pre-trained weights (never its file locations)."""
    from recbole_mmm4rec.config import PluginConfig, settings_hash

    config = PluginConfig(
        model=variant.model, dataset=dataset, config_file_list=config_files or None,
        config_dict=_run_config_dict(variant, shared, seed, "."), cmd_args=cmd_args,
    )
    identity = settings_hash(config, LOCATION_KEYS, length=12)
    if variant.pretrained:
        identity += file_digest(variant.pretrained)
    return hashlib.md5(identity.encode()).hexdigest()[:10]


def _plain(value: Any) -> Any:
    """JSON-ready: RecBole's OrderedDicts and numpy scalars as dicts and floats."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def _run_worker(job: dict, messages) -> None:
    """One run in a spawned process; sends ("epoch", key, record) per epoch then ("done", key,
    result) or ("failed", key, error)."""
    key = job["key"]
    # RecBole logs every setting to the console: keep it in the run's folder, under the progress bar.
    os.makedirs(job["config_dict"]["checkpoint_dir"], exist_ok=True)
    console = os.open(os.path.join(job["config_dict"]["checkpoint_dir"], "console.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(console, 1)
    os.dup2(console, 2)
    try:
        import torch

        if job["threads"]:
            torch.set_num_threads(job["threads"])
        from recbole_mmm4rec.allocator import keep_freed_memory
        from recbole_mmm4rec.quick_start import run_recbole

        keep_freed_memory()
        started = time.perf_counter()
        result = run_recbole(
            model=job["model"], dataset=job["dataset"], config_file_list=job["config_files"] or None,
            config_dict=job["config_dict"], cmd_args=job["cmd_args"], saved=True,
            epoch_callback=lambda record: messages.put(("epoch", key, _plain(record))),
        )
        result = _plain(result)
        result["wall_seconds"] = time.perf_counter() - started
        # ru_maxrss is in KiB on Linux: this process trained this run alone.
        result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if torch.cuda.is_available():
            result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        messages.put(("done", key, result))
    except BaseException as error:  # reported in the table; the other runs go on
        messages.put(("failed", key, f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=8)}"))


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="runs", unit="run", disable=not enabled, dynamic_ncols=True)


def execute(jobs: list[dict], workers: int, progress: bool = True) -> dict[str, dict]:
    """Run ``jobs`` (at most ``workers`` at once); returns key -> result or ``{"error": ...}``."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    pending, active, outcomes, status = list(jobs), {}, {}, {}

    def receive(timeout: float) -> None:
        """Handle every message that arrives within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, key, payload = messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            job = active[key][1] if key in active else None
            if kind == "epoch" and job is not None:
                score = payload.get("valid_score")
                status[key] = (f"{job['label']} seed {job['seed']}: epoch {payload['epoch'] + 1}"
                               + (f" valid {score:.4f}" if score is not None else ""))
            elif kind == "done":
                outcomes[key] = payload
            elif kind == "failed":
                outcomes[key] = {"error": payload}

    with _progress_bar(len(jobs), progress) as bar:
        while pending or active:
            while pending and len(active) < workers:
                job = pending.pop(0)
                process = context.Process(target=_run_worker, args=(job, messages))
                process.start()
                active[job["key"]] = (process, job)
                status[job["key"]] = f"{job['label']} seed {job['seed']}: starting"
            receive(timeout=2.0)
            for key, (process, job) in list(active.items()):
                if process.is_alive():
                    continue
                process.join()
                if key not in outcomes:
                    receive(timeout=1.0)  # what it sent just before it ended
                if key not in outcomes:
                    outcomes[key] = {"error": f"the run's process ended with exit code {process.exitcode} "
                                              "(killed, or out of memory?) before reporting a result"}
                del active[key], status[key]
                bar.update(1)
                if "error" in outcomes[key]:
                    bar.write(f"{job['label']} seed {job['seed']} failed: {outcomes[key]['error'].splitlines()[0]}")
            bar.set_postfix_str(" | ".join(status.values()))
    return outcomes


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _best_record(run: dict) -> dict | None:
    epochs = {record["epoch"]: record for record in run.get("epoch_history", [])}
    return epochs.get(run.get("best_epoch"))


def summarize(variants: list[Variant], runs: list[dict]) -> list[dict]:
    """Per variant: seeds, mean and std of each test metric, valid score, epochs to best,
    seconds to best, s/epoch, peak memory, parameters, errors."""
    summary = []
    for variant in variants:
        mine = [run for run in runs if run["label"] == variant.label]
        done = [run for run in mine if "error" not in run]
        row = {"label": variant.label, "model": variant.model, "seeds": [run["seed"] for run in done],
               "errors": [f"seed {run['seed']}: {run['error'].splitlines()[0]}" for run in mine if "error" in run]}
        if done:
            stats = {f"test_{metric}": [run["test_result"][metric] for run in done] for metric in done[0]["test_result"]}
            stats["best_valid_score"] = [run["best_valid_score"] for run in done]
            stats["epochs_to_best"] = [run["best_epoch"] + 1 for run in done]
            stats["seconds_to_best"] = [(_best_record(run) or {}).get("elapsed_seconds", math.nan) for run in done]
            stats["seconds_per_epoch"] = [run["seconds_per_epoch"] for run in done]
            stats["peak_memory_gib"] = [run.get("peak_cuda_bytes", run["peak_rss_bytes"]) / 2**30 for run in done]
            row.update({name: _mean_std(values) for name, values in stats.items()})
            row["values"] = stats
            row["parameters"] = done[0]["parameters"]
            row["parameters_total"] = done[0]["parameters_total"]
            row["split_fingerprints"] = sorted({run["split_fingerprint"] for run in done})
        summary.append(row)
    return summary


def compare_with_best_other(summary: list[dict], metric: str) -> None:
    """Adds to each row the ratio of its mean ``metric`` to the best mean of a variant of another
    model, and Welch's t-test p-value between them (needs two seeds each)."""
    from scipy import stats

    for row in summary:
        others = [other for other in summary if other["model"] != row["model"] and metric in other]
        if metric not in row or not others:
            continue
        best = max(others, key=lambda other: other[metric][0])
        row["best_other"] = best["label"]
        row["ratio_to_best_other"] = row[metric][0] / best[metric][0]
        mine, theirs = row["values"][metric], best["values"][metric]
        row["p_value_to_best_other"] = (
            float(stats.ttest_ind(mine, theirs, equal_var=False).pvalue) if min(len(mine), len(theirs)) > 1 else math.nan
        )


def _cell(stat: tuple[float, float] | None, digits: int = 4) -> str:
    if stat is None:
        return ""
    mean, std = stat
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def markdown_table(summary: list[dict], metrics: list[str], valid_metric: str) -> str:
    columns = ["model", "seeds", *(f"test {m}" for m in metrics), f"valid {valid_metric}", "epochs to best",
               "s to best", "s/epoch", "peak memory (GiB)", "trainable parameters", f"{valid_metric} / best other (p)", "errors"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in summary:
        ratio = ""
        if "ratio_to_best_other" in row:
            p_value = row["p_value_to_best_other"]
            ratio = f"{row['ratio_to_best_other']:.3f}x {row['best_other']}" + ("" if math.isnan(p_value) else f" (p={p_value:.3f})")
        cells = [
            row["label"], str(len(row["seeds"])),
            *(_cell(row.get(f"test_{m.lower()}")) for m in metrics), _cell(row.get("best_valid_score")),
            _cell(row.get("epochs_to_best"), 1), _cell(row.get("seconds_to_best"), 0), _cell(row.get("seconds_per_epoch"), 1),
            _cell(row.get("peak_memory_gib"), 2), f"{row['parameters']:,}" if "parameters" in row else "",
            ratio, "; ".join(row["errors"]).replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: list[dict], runs: list[dict], output_dir: str, valid_metric: str, test_metric: str) -> list[str]:
    """``valid_curves.png`` (every seed's validation curve) and ``quality_vs_time.png``."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("run_benchmark's plots need matplotlib: pip install 'recbole-mmm4rec[benchmark]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10")
    files = []
    valid_key = f"valid_{valid_metric.lower()}"
    figure, axes = plt.subplots(figsize=(8, 5))
    for index, row in enumerate(summary):
        for number, run in enumerate(r for r in runs if r["label"] == row["label"] and "error" not in r):
            points = [(record["epoch"] + 1, record[valid_key]) for record in run["epoch_history"] if valid_key in record]
            if points:
                axes.plot(*zip(*points), color=colors(index % 10), alpha=0.8, marker=".",
                          label=row["label"] if number == 0 else None)
                best = _best_record(run)
                if best and valid_key in best:
                    axes.plot(best["epoch"] + 1, best[valid_key], color=colors(index % 10), marker="*", markersize=12)
    axes.set(xlabel="epoch", ylabel=f"validation {valid_metric}", title="Validation per epoch (one line per seed; * best)")
    axes.grid(alpha=0.3)
    axes.legend()
    files.append(os.path.join(output_dir, "valid_curves.png"))
    figure.savefig(files[-1], dpi=120, bbox_inches="tight")
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(8, 5))
    test_key = f"test_{test_metric.lower()}"
    for index, row in enumerate(summary):
        if test_key not in row:
            continue
        (x, x_std), (y, y_std) = row["seconds_to_best"], row[test_key]
        axes.errorbar(x, y, xerr=None if math.isnan(x_std) else x_std, yerr=None if math.isnan(y_std) else y_std,
                      fmt="o", color=colors(index % 10), capsize=4, label=row["label"])
    axes.set(xlabel="training time to the best validation epoch (s)", ylabel=f"test {test_metric}",
             title="Quality vs time to best (mean ± std over seeds)")
    axes.grid(alpha=0.3)
    axes.legend()
    files.append(os.path.join(output_dir, "quality_vs_time.png"))
    figure.savefig(files[-1], dpi=120, bbox_inches="tight")
    plt.close(figure)
    return files


def _write_text(path: str, text: str) -> None:
    from recbole_mmm4rec.data.features import atomic_write

    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _first_config(variants: list[Variant], dataset: str, config_files: list[str], shared: dict,
                  cmd_args: Sequence[str]):
    """The shared settings (seed, data_path, valid_metric) as the first variant that resolves
    reads them; an unknown model is left to its own row."""
    from recbole_mmm4rec.config import PluginConfig

    errors = []
    for variant in variants:
        try:
            return PluginConfig(model=variant.model, dataset=dataset, config_file_list=config_files or None,
                                config_dict=shared, cmd_args=cmd_args)
        except Exception as error:
            errors.append(f"{variant.label}: {type(error).__name__}: {error}")
    raise BenchmarkError("no model of --models could be configured:\n" + "\n".join(errors))


def run_benchmark(
    dataset: str,
    models: str | Sequence[Variant],
    seeds: int | str | Sequence[int] = 3,
    pretrained: str | dict[str, str] | None = None,
    config_file_list: Sequence[str] | None = None,
    config_dict: dict | None = None,
    cmd_args: Sequence[str] = (),
    output_dir: str | None = None,
    runs_dir: str | None = None,
    workers: int = 1,
    threads_per_run: int | None = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Train and test every variant of ``models`` with every seed on ``dataset``; see the module
    docstring. ``config_dict`` and ``cmd_args`` (``--key=value``) are shared by every run, over
    :data:`DEFAULT_SETTINGS` (Hit and NDCG at 10, 20, 50; NDCG@10 selects the best epoch).
    ``runs_dir`` (default ``<output_dir>/runs``) may be shared by several benchmarks: each reuses
    the others' runs of equal settings."""
    from recbole_mmm4rec.quick_start import ensure_dataset_files

    variants = add_pretrained(parse_models(models) if isinstance(models, str) else list(models), pretrained)
    config_files = [os.path.abspath(path) for path in config_file_list or []]
    shared = {**DEFAULT_SETTINGS, **(config_dict or {})}
    output_dir = os.path.abspath(output_dir or os.path.join("benchmark_results", dataset))
    runs_dir = os.path.abspath(runs_dir or os.path.join(output_dir, "runs"))
    os.makedirs(runs_dir, exist_ok=True)

    first = _first_config(variants, dataset, config_files, shared, cmd_args)
    seed_list = parse_seeds(seeds, first["seed"])
    shared["data_path"] = os.path.dirname(os.path.abspath(first["data_path"]))  # RecBole appended the dataset
    ensure_dataset_files(first)  # built once here, not by concurrent runs

    runs, jobs = [], []
    # Seed-major: an interrupted benchmark has every model at the same number of seeds.
    for seed in seed_list:
        for variant in variants:
            run = {"label": variant.label, "model": variant.model, "seed": seed}
            runs.append(run)
            try:
                key = run_identity(variant, dataset, config_files, shared, cmd_args, seed)
            except Exception as error:  # an unknown model or a bad setting: that row says so
                run["error"] = f"{type(error).__name__}: {error}"
                continue
            run["key"] = key
            # Named by what it computes, not by its label: two labels of equal settings share it.
            run_file = os.path.join(runs_dir, f"{variant.model}-seed{seed}-{key}.json")
            run["file"] = run_file
            if os.path.isfile(run_file):
                with open(run_file, encoding="utf-8") as f:
                    run.update({k: v for k, v in json.load(f).items() if k != "label"}, reused=True)
                continue
            if any(job["key"] == key for job in jobs):
                continue  # another label with equal settings: one run fills both rows
            jobs.append({
                "key": key, "label": variant.label, "seed": seed, "model": variant.model, "dataset": dataset,
                "config_files": config_files, "cmd_args": list(cmd_args), "threads": threads_per_run,
                "config_dict": _run_config_dict(variant, shared, seed, os.path.join(output_dir, "saved", key)),
            })

    outcomes = execute(jobs, max(1, workers), progress)
    for run in runs:
        outcome = outcomes.get(run.get("key"))
        if outcome is None:
            continue
        run.update(outcome)
        if "error" not in outcome:
            _write_text(run["file"], json.dumps({k: v for k, v in run.items() if k not in ("file", "label")}, indent=1))

    metrics = [name for name in next((r["test_result"] for r in runs if "test_result" in r), {})]
    valid_metric = first["valid_metric"]
    summary = summarize(variants, runs)
    test_metric = f"test_{valid_metric.lower()}"
    compare_with_best_other(summary, test_metric)
    display = [name.replace("hit", "Hit").replace("ndcg", "NDCG") for name in metrics] or [valid_metric]
    table = markdown_table(summary, display, valid_metric)
    fingerprints = sorted({fp for row in summary for fp in row.get("split_fingerprints", [])})
    if len(fingerprints) > 1:
        table += f"\n\nWarning: the runs did not share one split (fingerprints {fingerprints})."
    _write_text(os.path.join(output_dir, "results.md"), table + "\n")
    _write_text(os.path.join(output_dir, "results.json"), json.dumps(
        {"dataset": dataset, "seeds": seed_list, "config_files": config_files, "shared_settings": shared,
         "cmd_args": list(cmd_args), "summary": summary, "runs": runs}, indent=1, default=str) + "\n")
    if any("error" not in run for run in runs):
        plot(summary, runs, output_dir, valid_metric, valid_metric)
    return BenchmarkResult(runs=runs, summary=summary, output_dir=output_dir, table=table)
