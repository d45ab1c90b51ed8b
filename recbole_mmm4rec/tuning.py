"""Hyper-parameter search with Ray Tune over :func:`recbole_mmm4rec.quick_start.run_recbole`.

Each trial is one ``run_recbole`` call in a Ray worker with the search's fixed settings and the
trial's sampled values. The validation score is reported to Ray after every evaluated epoch, so
ASHA can stop trials that lag behind; a trial that finishes reports once more, with its best
validation score and its test metrics (RecBole's test evaluation of the trial's own
best-validation checkpoint). A trial that raises is recorded with its error; the others go on.

At the end the experiment folder ``<storage_path>/<name>`` holds, beside Ray's files:

* ``results.csv``: one row per trial (searched values, status, evaluations, best validation score,
  test metrics of completed trials, error);
* ``best.yaml``: the best completed trial's full configuration (the search's config files and
  overrides merged, absolute data path, searched values, model and dataset), ready for
  ``run_recbole --config_files=best.yaml``;
* ``search.json``: the fixed settings, checked again when the search is resumed.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import yaml

from recbole_mmm4rec.allocator import keep_freed_memory
from recbole_mmm4rec.config import PluginConfig, plain_value
from recbole_mmm4rec.data.features import atomic_write
from recbole_mmm4rec.quick_start import ensure_dataset_files, run_recbole
from recbole_mmm4rec.search_space import Parameter, load_search_space, ray_param_space

METRIC = "valid_score"  # RecBole's valid_metric value, reported under one name for every model
# Keys holding paths: made absolute before the search, since trials run in their own folders.
PATH_KEYS = ("data_path", "checkpoint_dir", "dataset_save_path", "dataloaders_save_path", "pretrained")
# Keys that decide how many evaluations a trial makes, which ASHA's rungs are counted in.
SCHEDULE_KEYS = ("epochs", "eval_step")


class SearchError(RuntimeError):
    """A search that cannot start or resume as asked; the message says what to change."""


@dataclass
class SearchOptions:
    """How to search (``run_hyper``'s flags other than the model, data and config)."""

    num_samples: int = 1
    scheduler: str = "asha"  # asha: stop lagging trials at rungs; fifo: run every trial to the end
    algo: str = "random"  # random: sample every parameter; exhaustive: every choice value (grid)
    grace_period: int = 1  # ASHA: evaluations before a trial can be stopped
    reduction_factor: int = 2  # ASHA: 1 / reduction_factor of the trials go on at each rung
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    address: str | None = None  # host:port of a running Ray cluster; None: a local Ray
    storage_path: str = "ray_results"
    name: str | None = None  # default: <model>-<dataset>-<time>
    resume: bool = False


@dataclass(frozen=True)
class SearchSetup:
    """What every trial shares: model, dataset and the fixed config (paths absolute)."""

    model: str
    dataset: str
    fixed_config: dict
    valid_metric: str
    mode: str  # max or min
    evaluations: int  # validation runs of a full trial
    parameters: tuple[Parameter, ...] = field(default=())


@dataclass
class SearchResult:
    experiment_dir: str
    rows: list[dict]  # best first; failed trials last
    results_csv: str
    best_config_file: str | None  # None when no trial completed
    best: dict | None  # the best row


def prepare_search(
    model: str,
    dataset: str,
    params_file: str,
    config_file_list: Sequence[str] | None = None,
    config_dict: dict | None = None,
    cmd_args: Sequence[str] = (),
    options: SearchOptions | None = None,
) -> SearchSetup:
    """Read the space and the fixed config, and build the dataset once, before any trial.

    The config is resolved here as a trial will resolve it, so a wrong model name, config file or
    key fails now rather than in every trial. Relative paths are made absolute.
    """
    options = options or SearchOptions()
    parameters = load_search_space(params_file)
    ray_param_space(parameters, options.algo == "exhaustive")  # a bad value fails here, not in Ray
    searched = {p.name for p in parameters}
    if options.scheduler == "asha" and searched & set(SCHEDULE_KEYS):
        raise SearchError(
            f"{params_file} searches {', '.join(sorted(searched & set(SCHEDULE_KEYS)))}: ASHA counts "
            "its rungs in evaluations, which these change; set them with --epochs / --eval_step, "
            "or use --scheduler=fifo"
        )
    # RecBole's Config sets CUDA_VISIBLE_DEVICES to its gpu_id; Ray must still see every GPU.
    visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        config = PluginConfig(
            model=model,
            dataset=dataset,
            config_file_list=[os.path.abspath(f) for f in config_file_list or ()],
            config_dict=config_dict,
            cmd_args=cmd_args,
        )
    finally:
        if visible_devices is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
    if not config["eval_step"] or config["eval_step"] < 1:
        raise SearchError(f"a search needs validation: eval_step is {config['eval_step']}, expected >= 1")
    ensure_dataset_files(config)

    fixed = {key: value for key, value in config.external_config_dict.items() if key not in ("model", "dataset")}
    for key in PATH_KEYS:
        if fixed.get(key):
            fixed[key] = os.path.abspath(fixed[key])
    # config["data_path"] is <data_path>/<dataset>, RecBole's default data_path included.
    fixed["data_path"] = os.path.dirname(os.path.abspath(config["data_path"]))
    if isinstance(fixed.get("modality_files"), dict):
        fixed["modality_files"] = _absolute_paths(fixed["modality_files"])
    return SearchSetup(
        model=config["model"],
        dataset=config["dataset"],
        fixed_config=fixed,
        valid_metric=config["valid_metric"].lower(),
        mode="max" if config["valid_metric_bigger"] else "min",
        evaluations=config["epochs"] // config["eval_step"],
        parameters=tuple(parameters),
    )


def _absolute_paths(value: Any) -> Any:
    """``modality_files`` with every path made absolute (strings at any depth)."""
    if isinstance(value, dict):
        return {key: _absolute_paths(item) for key, item in value.items()}
    return os.path.abspath(value) if isinstance(value, str) else value


def train_trial(searched: dict, setup: SearchSetup) -> None:
    """One trial in a Ray worker: ``run_recbole`` with the fixed config and ``searched``."""
    # Importing the package applies the RecBole compatibility fixes in this worker process.
    import recbole_mmm4rec  # noqa: F401
    import ray
    from ray.air import session

    keep_freed_memory()
    gpu_ids = ray.get_gpu_ids()
    config_dict = {
        **setup.fixed_config,
        **searched,
        # Concurrent trials would share (and overwrite) one checkpoint folder: RecBole names
        # checkpoints by the second they were created.
        "checkpoint_dir": os.path.abspath("saved"),
        # Only the GPUs Ray gave this trial; RecBole sets CUDA_VISIBLE_DEVICES from gpu_id.
        "use_gpu": bool(gpu_ids),
    }
    if gpu_ids:
        config_dict["gpu_id"] = ",".join(str(i) for i in gpu_ids)

    def report_epoch(record: dict) -> None:
        if "valid_score" in record:  # epochs that RecBole did not validate report nothing
            session.report(dict(record))

    result = run_recbole(
        model=setup.model, dataset=setup.dataset, config_dict=config_dict, saved=True, epoch_callback=report_epoch
    )
    session.report(
        {
            METRIC: float(result["best_valid_score"]),
            "completed": True,
            "epochs_trained": result["epochs_trained"],
            "best_epoch": result["best_epoch"],
            **{f"best_valid_{k}": float(v) for k, v in (result["best_valid_result"] or {}).items()},
            **{f"test_{k}": float(v) for k, v in (result["test_result"] or {}).items()},
        }
    )


def trial_dirname(trial) -> str:
    """Short trial folders (Ray's default puts every sampled value in the name)."""
    return f"trial_{trial.trial_id}"


def connect_ray(address: str | None) -> bool:
    """Join the cluster at ``address``, or start a local Ray sized to this machine.

    Returns True when this call started the connection (and the caller should shut it down);
    a Ray already initialised in this process (a notebook, a test session) is used as it is.
    """
    import ray

    started = not ray.is_initialized()
    if started and address:
        ray.init(address=address, log_to_driver=False)
    elif started:
        # "local": a fresh Ray even when a `ray start` cluster runs on this machine. Ray's memory
        # monitor is off: it counts every process of the machine, and when it kills a trial's
        # worker, Ray 2.6's Tune aborts the whole search (seen on a shared machine) instead of
        # recording that trial as failed, as it does when the kernel ends a worker.
        ray.init(
            address="local",
            num_cpus=len(os.sched_getaffinity(0)),
            include_dashboard=False,
            log_to_driver=False,
            _system_config={"memory_monitor_refresh_ms": 0},
        )
    resources = ray.cluster_resources()
    print(
        f"run_hyper: Ray cluster at {ray.get_runtime_context().gcs_address} "
        f"({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs)"
    )
    return started


def run_search(setup: SearchSetup, options: SearchOptions) -> SearchResult:
    """Run (or resume) the search and write ``results.csv`` and ``best.yaml``."""
    from ray import air, tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    storage_path = os.path.abspath(options.storage_path)
    if options.resume and not options.name:
        raise SearchError("--resume needs --name: the folder of the search under " + storage_path)
    name = options.name or f"{setup.model}-{setup.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_dir = os.path.join(storage_path, name)
    _check_or_record_setup(experiment_dir, setup, options.resume)

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, setup=setup),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
    )
    started_ray = connect_ray(options.address)
    try:
        if options.resume:
            tuner = tune.Tuner.restore(experiment_dir, trainable=trainable, resume_unfinished=True)
        else:
            if options.scheduler == "asha":
                # One evaluation more than a trial makes: the finished trial's last report
                # (its test metrics) must not be cut off by max_t.
                scheduler = ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=setup.evaluations + 1,
                    grace_period=options.grace_period,
                    reduction_factor=options.reduction_factor,
                )
            else:
                scheduler = FIFOScheduler()
            tuner = tune.Tuner(
                trainable,
                param_space=ray_param_space(list(setup.parameters), options.algo == "exhaustive"),
                tune_config=tune.TuneConfig(
                    metric=METRIC,
                    mode=setup.mode,
                    scheduler=scheduler,
                    num_samples=options.num_samples,
                    max_concurrent_trials=options.max_concurrent,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=air.RunConfig(
                    name=name,
                    storage_path=storage_path,
                    failure_config=air.FailureConfig(max_failures=0, fail_fast=False),
                    verbose=1,
                ),
            )
        grid = tuner.fit()
        rows = [_trial_row(result, setup) for result in grid]
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return _write_outputs(experiment_dir, setup, rows)


def _check_or_record_setup(experiment_dir: str, setup: SearchSetup, resume: bool) -> None:
    """Record the fixed settings of a new search; on resume, refuse a different command."""
    record_file = os.path.join(experiment_dir, "search.json")
    record = json.loads(json.dumps(asdict(setup), default=str))
    if resume:
        if not os.path.isfile(record_file):
            raise SearchError(f"{experiment_dir} holds no search to resume (no search.json)")
        with open(record_file, encoding="utf-8") as f:
            saved = json.load(f)
        changed = sorted(key for key in set(saved) | set(record) if saved.get(key) != record.get(key))
        if changed:
            raise SearchError(
                f"the command differs from the search in {experiment_dir} in: {', '.join(changed)}; "
                "resume with the command (model, dataset, config files, overrides, space) that started it"
            )
        return
    if os.path.exists(experiment_dir):
        raise SearchError(f"{experiment_dir} exists: pass --resume to continue that search, or another --name")
    os.makedirs(experiment_dir)
    text = json.dumps(record, indent=1)
    atomic_write(record_file, lambda f: f.write(text.encode("utf-8")))


def _trial_row(result, setup: SearchSetup) -> dict:
    """A results-table row: searched values, status, evaluations, scores, error."""
    metrics = result.metrics or {}
    config = result.config
    params_file = os.path.join(str(result.log_dir), "params.json")
    if config is None and os.path.isfile(params_file):  # no report yet: Ray wrote its values there
        with open(params_file, encoding="utf-8") as f:
            config = json.load(f)
    config = config or {}
    history = result.metrics_dataframe
    epoch_scores = [] if history is None or METRIC not in history else history[METRIC].dropna().tolist()
    if metrics.get("completed"):
        epoch_scores = epoch_scores[:-1]  # the final report repeats the best score
    if result.error is not None:
        status = "error"
    elif metrics.get("completed"):
        status = "completed"
    elif metrics.get("done"):  # Ray marks the last result of a trial its scheduler stopped
        status = "stopped early"
    else:  # the search was interrupted before this trial ended: --resume runs it
        status = "unfinished"
    pick = max if setup.mode == "max" else min
    row = {
        "trial": os.path.basename(str(result.log_dir)).removeprefix("trial_"),
        "status": status,
        **{p.name: plain_value(config.get(p.name)) for p in setup.parameters},
        "evaluations": len(epoch_scores),
        f"best valid {setup.valid_metric}": pick(epoch_scores) if epoch_scores else None,
    }
    row.update({f"test {key[5:]}": value for key, value in metrics.items() if key.startswith("test_")})
    row["error"] = _error_line(result.error) if result.error is not None else ""
    return row


def _error_line(error: BaseException) -> str:
    """The exception line of a trial's error (Ray wraps it in the remote traceback)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _write_outputs(experiment_dir: str, setup: SearchSetup, rows: list[dict]) -> SearchResult:
    score_column = f"best valid {setup.valid_metric}"
    sign = -1 if setup.mode == "max" else 1

    def order(row: dict) -> tuple:
        score = row[score_column]
        return (row["status"] == "error", score is None, sign * score if score is not None else 0.0)

    rows = sorted(rows, key=order)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    columns.append(columns.pop(columns.index("error")))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    results_csv = os.path.join(experiment_dir, "results.csv")
    atomic_write(results_csv, lambda f: f.write(table.getvalue().encode("utf-8")))

    completed = [row for row in rows if row["status"] == "completed"]
    best = completed[0] if completed else None
    best_config_file = None
    if best is not None:
        best_config_file = os.path.join(experiment_dir, "best.yaml")
        best_config = {
            "model": setup.model,
            "dataset": setup.dataset,
            **setup.fixed_config,
            **{p.name: best[p.name] for p in setup.parameters},
        }
        test = ", ".join(f"{k[5:]} {v:.4f}" for k, v in best.items() if k.startswith("test "))
        header = (
            f"# run_hyper: best of {len(rows)} trials in {experiment_dir}: trial {best['trial']}, "
            f"{score_column} {best[score_column]:.4f}\n# its test metrics: {test}\n"
            "# run it again: run_recbole --config_files=best.yaml\n"
        )
        text = header + yaml.safe_dump(best_config, sort_keys=False)
        atomic_write(best_config_file, lambda f: f.write(text.encode("utf-8")))
    return SearchResult(experiment_dir, rows, results_csv, best_config_file, best)


def format_table(rows: list[dict]) -> str:
    """The results table as aligned plain text (floats to 4 decimals)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            # small searched values (learning rates) keep their significant digits
            return f"{value:.3g}" if 0 < abs(value) < 1e-2 else f"{value:.4f}"
        return str(value)

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(r[i]) for r in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(value.ljust(width) for value, width in zip(r, widths)) for r in cells]
    return "\n".join(lines)
