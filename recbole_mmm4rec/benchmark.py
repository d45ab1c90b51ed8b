"""``run_benchmark``: several models side by side on one dataset, several seeds each.

Every run is one ``run_recbole`` call in its own spawned process (its peak memory is its own, and
a crash, even a killed process, ends only that run), with the same config files and overrides,
so every model gets the same split, evaluator and early stopping. A variant is a model name with
optional settings, ``MMM4Rec[use_item_id=False]``; ``pretrained`` adds a fine-tuned variant of a
model beside its from-scratch one.

Each finished run is stored, as soon as it ends, as ``<runs>/<model>-seed<seed>-<hash>.json``,
the hash naming its final settings, the dataset files' contents, the pre-trained checkpoint's weights
and the package versions: a re-run of the command, or another command asking for the same
settings under another label, reuses it. A failed run is reported and retried by the next re-run.
The outputs are ``results.md`` (mean and std over seeds), ``results.json`` (every run, raw) and
two plots (``valid_curves.png``: the validation metric per epoch; ``quality_vs_time.png``: test
metric against time to the best epoch).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

# What does not change what a run computes: where files go, how it is displayed and launched.
# `pretrained` is hashed by its checkpoint's weights instead of its path.
LOCATION_KEYS = {
    "checkpoint_dir", "data_path", "show_progress", "state", "verbose", "log_wandb", "wandb_project",
    "pretrained", "save_dataset", "dataset_save_path", "save_dataloaders", "dataloaders_save_path",
    "gpu_id", "local_rank", "world_size", "nproc", "offset", "ip", "port", "worker", "single_spec",
    "memory_map_features", "trust_checkpoint",
}
# run_benchmark's defaults (Hit and NDCG at 10, 20, 50; NDCG@10 selects), under the config files.
def defaults_file() -> str:
    from recbole_mmm4rec.registry import PROPERTIES_DIR

    return os.path.join(PROPERTIES_DIR, "benchmark.yaml")


class BenchmarkError(ValueError):
    """A command the benchmark cannot run (bad --models, --pretrained or --seeds)."""


@dataclasses.dataclass
class Variant:
    """A row of the table: ``model`` with ``settings`` over the shared ones, from ``pretrained``."""

    label: str
    model: str
    settings: tuple[tuple[str, Any], ...] = ()
    pretrained: str | None = None
    scratch_label: str | None = None  # a pre-trained row's from-scratch row


@dataclasses.dataclass
class BenchmarkResult:
    """Every run (finished, reused or failed), the per-variant summary, and where it was written."""

    runs: list[dict]
    summary: list[dict]
    output_dir: str
    table: str
    plots: list[str]


def split_top_level(text: str, option: str) -> list[str]:
    """``text`` (the value of ``option``) split at the commas outside brackets and quotes."""
    closing = {"[": "]", "{": "}", "(": ")"}
    parts, stack, quote, current = [], [], None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in closing:
            stack.append(closing[char])
        elif char in closing.values():
            if not stack or stack.pop() != char:
                raise BenchmarkError(f"{option}: unbalanced {char!r} in {text!r}")
        elif char == "," and not stack:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    if stack or quote:
        missing = f"closing quote {quote}" if quote else f"closing {stack[-1]!r}"
        raise BenchmarkError(f"{option}: unclosed, {missing} missing, in {text!r}")
    return [part for part in parts + [current.strip()] if part]


def parse_models(text: str) -> list[Variant]:
    """``"MMM4Rec,MMM4Rec[use_item_id=False],SASRec"`` -> variants; values as RecBole reads
    ``--key=value`` (``[learning_rate=3e-4, learner=adam, topk=[10, 20]]``)."""
    from recbole_mmm4rec.config import convert_values

    variants = []
    for part in split_top_level(text, "--models"):
        name, bracket, rest = part.partition("[")
        if not name.strip().isidentifier() or (bracket and not rest.endswith("]")):
            raise BenchmarkError(f"--models: {part!r} is not NAME or NAME[key=value, ...]")
        settings = {}
        for assignment in split_top_level(rest[:-1], "--models") if bracket else []:
            key, equals, value = assignment.partition("=")
            if not equals or not key.strip().isidentifier():
                raise BenchmarkError(f"--models: {assignment!r} in {part!r} is not key=value")
            settings[key.strip()] = value.strip()
        variants.append(Variant(label=part, model=name.strip(), settings=tuple(convert_values(settings).items())))
    labels = [variant.label for variant in variants]
    if len(set(labels)) != len(labels):
        raise BenchmarkError(f"--models names a variant twice: {text!r}")
    if not variants:
        raise BenchmarkError("--models is empty: name at least one model, e.g. --models=MMM4Rec,SASRec")
    return variants


def add_pretrained(variants: list[Variant], pretrained: str | dict[str, str] | None) -> list[Variant]:
    """Each from-scratch variant followed by its fine-tuned one when ``pretrained`` names a
    checkpoint for its label or model (``"MMM4Rec=a.pth,MMM4Rec[use_item_id=False]=b.pth"`` or a dict)."""
    if not pretrained:
        return variants
    if isinstance(pretrained, str):
        pairs = [item.rpartition("=") for item in split_top_level(pretrained, "--pretrained")]
        if any(not equals or not name for name, equals, _ in pairs):
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
            result.append(dataclasses.replace(
                variant, label=f"{variant.label} (pre-trained)", pretrained=path, scratch_label=variant.label))
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
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise BenchmarkError(f"--seeds: a list of distinct seeds, found {seeds}")
    return seeds


def file_digest(paths: Sequence[str]) -> str:
    """SHA-1 of the files' names and contents, in the order given."""
    digest = hashlib.sha1()
    for path in paths:
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def checkpoint_digest(path: str, trust: bool = False) -> str:
    """SHA-1 of what fine-tuning takes from a checkpoint: the saved model's name and every
    weight (name, dtype, shape, bytes). Not the file's bytes: ``torch.save`` writes a random
    serialisation id and the temporary file's name into every archive, so a checkpoint
    re-trained bit for bit never has the same bytes twice."""
    import torch

    from recbole_mmm4rec.model.transfer import TransferError
    from recbole_mmm4rec.quick_start import read_pretrained

    try:
        model, state_dict = read_pretrained(path, trust)
    except TransferError as error:
        raise BenchmarkError(f"pretrained {error}") from None
    digest = hashlib.sha1(f"{model or ''}\0".encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def dataset_digest(folder: str) -> str:
    """The contents of a dataset folder's files (atomic files, features)."""
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder)) if os.path.isdir(folder) else []
    return file_digest([path for path in files if os.path.isfile(path)])


def _run_config_dict(variant: Variant, shared: dict, seed: int, run_dir: str) -> dict:
    """Shared settings, then the variant's, then the seed: a run's own settings always win."""
    config = {**shared, **dict(variant.settings), "seed": seed, "checkpoint_dir": run_dir, "show_progress": False}
    if variant.pretrained:
        config["pretrained"] = variant.pretrained
    return config


def run_identity(config, context: str) -> str:
    """Ten hex digits naming what a run computes: its final settings (never file locations), the
    pre-trained checkpoint's weights (:func:`checkpoint_digest`), and ``context`` (dataset
    contents, versions)."""
    from recbole_mmm4rec.compat import trusts_files
    from recbole_mmm4rec.config import settings_hash

    identity = settings_hash(config, LOCATION_KEYS, length=12) + context
    if config["pretrained"]:
        identity += checkpoint_digest(config["pretrained"], trust=trusts_files(config))
    return hashlib.md5(identity.encode()).hexdigest()[:10]


def peak_resident_bytes() -> int:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries the parent's
    peak over fork and exec into it."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")


def run_worker(job: dict, sender: Connection) -> None:
    """One run in a spawned process: sends ``("epoch", record)`` per epoch, then ``("done",
    result)`` or ``("failed", error)``."""
    try:
        # RecBole logs every setting to the console: keep it in the run's folder, under the progress bar.
        os.makedirs(job["config_dict"]["checkpoint_dir"], exist_ok=True)
        console = os.open(os.path.join(job["config_dict"]["checkpoint_dir"], "console.log"),
                          os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(console, 1)
        os.dup2(console, 2)
        import torch

        if job["threads"]:
            torch.set_num_threads(job["threads"])
        from recbole_mmm4rec.allocator import keep_freed_memory
        from recbole_mmm4rec.config import plain_value
        from recbole_mmm4rec.quick_start import run_recbole

        keep_freed_memory()
        started = time.perf_counter()
        result = run_recbole(
            model=job["model"], dataset=job["dataset"], config_file_list=job["config_files"],
            config_dict=job["config_dict"], saved=True,
            epoch_callback=lambda record: sender.send(("epoch", plain_value(record))),
        )
        result = plain_value(result)
        result["wall_seconds"] = time.perf_counter() - started
        result["peak_rss_bytes"] = peak_resident_bytes()
        if torch.cuda.is_available():
            result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        sender.send(("done", result))
    except BaseException as error:  # reported in the table; the other runs go on
        sender.send(("failed", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=8)}"))


def _exit_message(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"the run's process was killed by signal {-exitcode} (out of memory?) before reporting a result"
    return f"the run's process ended (exit code {exitcode}) without reporting a result"


def execute(
    jobs: list[dict],
    workers: int,
    progress: bool = True,
    on_outcome: Callable[[str, dict], None] | None = None,
    worker: Callable[[dict, Connection], None] = run_worker,
) -> dict[str, dict]:
    """Run ``jobs`` (at most ``workers`` at once), each ``worker(job, sender)`` in a spawned
    process with its own pipe; returns key -> result or ``{"error": ...}``, and hands each to
    ``on_outcome`` as soon as its run ends. Interrupted (Ctrl-C, or SIGTERM in the main thread),
    it stops the running processes."""
    from tqdm import tqdm

    def terminate(signum, frame):
        raise SystemExit(128 + signum)  # unwinds through the finally below; SIG_DFL would orphan the runs

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, terminate) if in_main_thread else None

    context = multiprocessing.get_context("spawn")
    pending, active, outcomes, status = list(jobs), {}, {}, {}
    with tqdm(total=len(jobs), desc="runs", unit="run", disable=not progress, dynamic_ncols=True) as bar:
        try:
            while pending or active:
                while pending and len(active) < workers:
                    job = pending.pop(0)
                    receiver, sender = context.Pipe(duplex=False)
                    process = context.Process(target=worker, args=(job, sender))
                    process.start()
                    sender.close()  # the child holds the only write end: its exit is our EOF
                    active[job["key"]] = (process, receiver, job)
                    status[job["key"]] = f"{job['label']} seed {job['seed']}: starting"
                ready = wait([receiver for _, receiver, _ in active.values()], timeout=5)
                for key, (process, receiver, job) in list(active.items()):
                    if receiver not in ready:
                        continue
                    name = f"{job['label']} seed {job['seed']}"
                    try:
                        kind, payload = receiver.recv()
                    except Exception:  # EOF, or a message cut short by a killed process
                        process.join()
                        receiver.close()
                        outcomes.setdefault(key, {"error": _exit_message(process.exitcode)})
                        del active[key], status[key]
                        bar.update(1)
                        if "error" in outcomes[key]:
                            bar.write(f"{name} failed: {outcomes[key]['error'].splitlines()[0]}")
                        continue
                    if kind == "epoch":
                        score = payload.get("valid_score")
                        status[key] = f"{name}: epoch {payload['epoch'] + 1}" + (f" valid {score:.4f}" if score is not None else "")
                    else:
                        outcomes[key] = payload if kind == "done" else {"error": payload}
                        if on_outcome is not None:
                            on_outcome(key, outcomes[key])
                bar.set_postfix_str(" | ".join(status.values()))
        finally:
            for process, receiver, _ in active.values():
                process.terminate()
                process.join()
                receiver.close()
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous_handler)
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
        done = [run for run in mine if "test_result" in run]
        row = {"label": variant.label, "model": variant.model, "scratch_label": variant.scratch_label,
               "seeds": [run["seed"] for run in done],
               "errors": [f"seed {run['seed']}: {run['error'].splitlines()[0]}" for run in mine if "error" in run],
               "not_run": [run["seed"] for run in mine if run.get("not_run")]}
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


def _ratio_and_p_value(mine: list[float], theirs: list[float]) -> tuple[float, float]:
    """Ratio of the means, and Welch's t-test p-value (needs two values each)."""
    from scipy import stats

    their_mean = _mean_std(theirs)[0]
    ratio = _mean_std(mine)[0] / their_mean if their_mean else math.nan
    if min(len(mine), len(theirs)) < 2:
        return ratio, math.nan
    return ratio, float(stats.ttest_ind(mine, theirs, equal_var=False).pvalue)


def compare(summary: list[dict], metric: str) -> None:
    """Adds to each row the ratio of its mean ``metric`` to the best mean among the variants of
    the other models, with Welch's t-test p-value; and to each pre-trained row, the ratios of
    ``metric`` and of epochs to best to its from-scratch row."""
    by_label = {row["label"]: row for row in summary}
    for row in summary:
        if metric not in row:
            continue
        others = [other for other in summary if other["model"] != row["model"] and metric in other]
        if others:
            best = max(others, key=lambda other: other[metric][0])
            row["best_other"] = best["label"]
            row["ratio_to_best_other"], row["p_value_to_best_other"] = _ratio_and_p_value(
                row["values"][metric], best["values"][metric])
        scratch = by_label.get(row["scratch_label"])
        if scratch is not None and metric in scratch:
            row["ratio_to_scratch"], row["p_value_to_scratch"] = _ratio_and_p_value(
                row["values"][metric], scratch["values"][metric])
            row["epochs_to_best_ratio_to_scratch"] = row["epochs_to_best"][0] / scratch["epochs_to_best"][0]


def stat_cell(stat: tuple[float, float] | None, digits: int = 4) -> str:
    """``mean ± std`` of a summary row's statistic (the mean alone for one seed; empty for none)."""
    if stat is None:
        return ""
    mean, std = stat
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def ratio_cell(ratio: float, p_value: float, against: str = "") -> str:
    """``1.023x<against> (p=0.123)``; the p-value only when there is one."""
    return f"{ratio:.3f}x{against}" + ("" if math.isnan(p_value) else f" (p={p_value:.3f})")


def markdown_table(summary: list[dict], metrics: list[str], valid_metric: str) -> str:
    """One row per variant: mean ± sample std over its seeds of every column."""
    transfer = any(row.get("scratch_label") for row in summary)
    columns = ["model", "seeds", *(f"test {m}" for m in metrics), f"valid {valid_metric}", "epochs to best",
               "s to best", "s/epoch", "peak memory (GiB)", "trainable parameters",
               f"test {valid_metric} / best other model (p)",
               *([f"vs from scratch: test {valid_metric} (p), epochs to best"] if transfer else []), "errors, runs not done"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in summary:
        other = (ratio_cell(row["ratio_to_best_other"], row["p_value_to_best_other"], f" {row['best_other']}")
                 if "ratio_to_best_other" in row else "")
        scratch = (ratio_cell(row["ratio_to_scratch"], row["p_value_to_scratch"])
                   + f", {row['epochs_to_best_ratio_to_scratch']:.2f}x" if "ratio_to_scratch" in row else "")
        cells = [
            row["label"], str(len(row["seeds"])),
            *(stat_cell(row.get(f"test_{m.lower()}")) for m in metrics), stat_cell(row.get("best_valid_score")),
            stat_cell(row.get("epochs_to_best"), 1), stat_cell(row.get("seconds_to_best"), 0), stat_cell(row.get("seconds_per_epoch"), 1),
            stat_cell(row.get("peak_memory_gib"), 2), f"{row['parameters']:,}" if "parameters" in row else "",
            other, *([scratch] if transfer else []),
            "; ".join(row["errors"] + ([f"not run yet: seed {', '.join(map(str, row['not_run']))}"] if row["not_run"] else [])).replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_warning(summary: list[dict]) -> str:
    """Empty when every finished run had one split, else which rows had which."""
    rows_by_split: dict[str, list[str]] = {}
    for row in summary:
        for fingerprint in row.get("split_fingerprints", []):
            rows_by_split.setdefault(fingerprint, []).append(row["label"])
    if len(rows_by_split) < 2:
        return ""
    listing = "; ".join(f"{fingerprint}: {', '.join(labels)}" for fingerprint, labels in sorted(rows_by_split.items()))
    return (f"Warning: the runs did not share one split ({listing}). General (non-sequential) models split "
            "the interactions, sequential models their prefixes: compare within one kind.")


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise BenchmarkError("run_benchmark's plots need matplotlib: pip install 'recbole-mmm4rec[benchmark]'") from None
    return matplotlib


def plot(summary: list[dict], runs: list[dict], output_dir: str, valid_metric: str, test_metric: str) -> list[str]:
    """``valid_curves.png`` (every seed's validation curve) and ``quality_vs_time.png``."""
    matplotlib = _matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10")
    files = []
    valid_key = f"valid_{valid_metric.lower()}"
    figure, axes = plt.subplots(figsize=(8, 5))
    for index, row in enumerate(summary):
        for number, run in enumerate(r for r in runs if r["label"] == row["label"] and "test_result" in r):
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


def _first_config(variants: list[Variant], dataset: str | None, config_files: list[str], shared: dict):
    """The shared settings (dataset, seed, data_path, valid_metric) as the first variant that
    resolves reads them; an unknown model is left to its own row."""
    from recbole_mmm4rec.config import PluginConfig

    errors = []
    for variant in variants:
        try:
            return PluginConfig(model=variant.model, dataset=dataset, config_file_list=config_files, config_dict=shared)
        except Exception as error:
            errors.append(f"{variant.label}: {type(error).__name__}: {error}")
    raise BenchmarkError("no model of --models could be configured:\n" + "\n".join(errors))


def plan(
    variants: list[Variant], first, seed_list: list[int], config_files: list[str], shared: dict,
    output_dir: str, runs_dir: str, threads_per_run: int | None,
) -> tuple[list[dict], list[dict]]:
    """Every run (finished ones loaded from ``runs_dir``) and the jobs left to run, seed-major:
    an interrupted benchmark has every model at the same number of seeds. ``first`` is
    :func:`_first_config`'s."""
    import recbole

    import recbole_mmm4rec
    from recbole_mmm4rec.config import PluginConfig
    from recbole_mmm4rec.quick_start import ensure_dataset_files

    dataset = first["dataset"]
    shared = {**shared, "data_path": os.path.dirname(os.path.abspath(first["data_path"]))}  # RecBole appended the dataset
    ensure_dataset_files(first)  # built once here, not by concurrent runs
    context = f"{dataset_digest(first['data_path'])} recbole {recbole.__version__} recbole-mmm4rec {recbole_mmm4rec.__version__}"
    runs, jobs = [], []
    for seed in seed_list:
        for variant in variants:
            run = {"label": variant.label, "model": variant.model, "seed": seed}
            runs.append(run)
            config_dict = _run_config_dict(variant, shared, seed, ".")
            try:
                config = PluginConfig(model=variant.model, dataset=dataset, config_file_list=config_files, config_dict=config_dict)
                key = run_identity(config, context)
            except Exception as error:  # an unknown model or a bad setting: that row says so
                run["error"] = f"{type(error).__name__}: {error}"
                continue
            # Named by what it computes, not by its label: two labels of equal settings share it.
            run.update(key=key, file=os.path.join(runs_dir, f"{variant.model}-seed{seed}-{key}.json"))
            if os.path.isfile(run["file"]):
                with open(run["file"], encoding="utf-8") as f:
                    run.update({k: v for k, v in json.load(f).items() if k != "label"}, reused=True)
            elif not any(job["key"] == key for job in jobs):  # another label with equal settings: one run
                jobs.append({
                    "key": key, "label": variant.label, "seed": seed, "model": variant.model, "dataset": dataset,
                    "config_files": config_files, "threads": threads_per_run,
                    "config_dict": {**config_dict, "checkpoint_dir": os.path.join(output_dir, "saved", key)},
                })
    return runs, jobs


def run_benchmark(
    dataset: str | None,
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
    report_only: bool = False,
) -> BenchmarkResult:
    """Train and test every variant of ``models`` with every seed on ``dataset`` (None: the
    config files'); see the module docstring.

    Settings, from weakest to strongest: RecBole's and each model's defaults,
    ``properties/benchmark.yaml`` (Hit and NDCG at 10, 20, 50; NDCG@10 selects the best epoch),
    ``config_file_list``, ``config_dict`` and ``cmd_args`` (``--key=value``, shared by every
    run), the variant's own settings, the seed. ``runs_dir`` (default ``<output_dir>/runs``) may
    be shared by several benchmarks: each reuses the others' runs of equal settings.
    ``report_only`` trains nothing: the outputs show the finished runs, and the rest as not run.
    """
    from recbole_mmm4rec.config import parse_cmd_args

    _matplotlib()  # before hours of training, not after
    variants = add_pretrained(parse_models(models) if isinstance(models, str) else list(models), pretrained)
    config_files = [defaults_file()] + [os.path.abspath(path) for path in config_file_list or []]
    overrides, unrecognized = parse_cmd_args(cmd_args)
    if unrecognized:
        raise BenchmarkError(f"arguments {unrecognized} are not --key=value")
    shared = {**(config_dict or {}), **overrides}
    first = _first_config(variants, dataset, config_files, shared)
    seed_list = parse_seeds(seeds, first["seed"])
    output_dir = os.path.abspath(output_dir or os.path.join("benchmark_results", first["dataset"]))
    runs_dir = os.path.abspath(runs_dir or os.path.join(output_dir, "runs"))
    os.makedirs(runs_dir, exist_ok=True)
    runs, jobs = plan(variants, first, seed_list, config_files, shared, output_dir, runs_dir, threads_per_run)

    def keep(key: str, outcome: dict) -> None:
        """Store a finished run at once: an interrupted benchmark loses only the runs going on."""
        for run in runs:
            if run.get("key") == key:
                run.update(outcome)
                if "error" not in outcome and "not_run" not in outcome:
                    _write_text(run["file"], json.dumps({k: v for k, v in run.items() if k not in ("file", "label")}, indent=1))

    if report_only:
        for job in jobs:
            keep(job["key"], {"not_run": True})
    else:
        execute(jobs, max(1, workers), progress, on_outcome=keep)

    valid_metric = first["valid_metric"]
    metrics = list(next((run["test_result"] for run in runs if "test_result" in run), {}))
    summary = summarize(variants, runs)
    compare(summary, f"test_{valid_metric.lower()}")
    display = [name.replace("hit", "Hit").replace("ndcg", "NDCG") for name in metrics] or [valid_metric]
    table = markdown_table(summary, display, valid_metric)
    warning = split_warning(summary)
    if warning:
        table += "\n\n" + warning
    _write_text(os.path.join(output_dir, "results.md"), table + "\n")
    _write_text(os.path.join(output_dir, "results.json"), json.dumps(
        {"dataset": first["dataset"], "seeds": seed_list, "config_files": config_files, "shared_settings": shared,
         "summary": summary, "runs": runs}, indent=1, default=str) + "\n")
    plots = plot(summary, runs, output_dir, valid_metric, valid_metric) if any("test_result" in r for r in runs) else []
    return BenchmarkResult(runs=runs, summary=summary, output_dir=output_dir, table=table, plots=plots)
