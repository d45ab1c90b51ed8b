"""``run_recbole``, ``run_pretrain``, ``run_hyper``, ``run_benchmark`` and ``run_recommend``: RecBole's command
lines, for RecBole's models and this package's.

Each turns argv into a call of quick start, pre-training, tuning or recommend; any ``--key=value``
the training commands do not know is a RecBole config override.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from recbole_mmm4rec import registry
from recbole_mmm4rec.allocator import keep_freed_memory


# Every command reads checkpoints or saved datasets; the opt-out is a config key like any other.
TRUST_HELP = (
    " --trust_checkpoint=True unpickles checkpoints, saved datasets and saved dataloaders without "
    "restriction (only for files you trust: by default they may hold only RecBole's and recbole-mmm4rec's objects)."
)


def input_errors() -> tuple[type, ...]:
    """The package's errors about the user's files and settings: each message names the file or
    key and what to fix, so the commands print it without a traceback."""
    from recbole_mmm4rec.compat import UntrustedCheckpointError
    from recbole_mmm4rec.config import ConfigError
    from recbole_mmm4rec.data.atomic_checks import AtomicFileError
    from recbole_mmm4rec.data.features import FeatureFileError
    from recbole_mmm4rec.model.transfer import TransferError

    return ConfigError, AtomicFileError, FeatureFileError, UntrustedCheckpointError, TransferError


def add_model_and_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--model and --config_files, as in RecBole's run_recbole.py."""
    parser.add_argument(
        "--model", "-m", type=str, default=None,
        help="name of the model (default BPR; run_recbole and run_hyper take the config files' `model` when they name one)",
    )
    parser.add_argument(
        "--config_files", type=str, default=None, help="config files, separated by spaces"
    )


def add_dataset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", "-d", type=str, default=None,
        help="name of the dataset (default ml-100k, or the config files' `dataset` when they name one)",
    )


def model_and_dataset(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """RecBole's defaults (BPR on ml-100k) when no config file may name the model and dataset;
    None lets the config files' ``model`` / ``dataset`` apply (``best.yaml`` of run_hyper)."""
    if args.config_files:
        return args.model, args.dataset
    return args.model or "BPR", args.dataset or "ml-100k"


def config_file_list(args: argparse.Namespace) -> list[str] | None:
    return args.config_files.strip().split() if args.config_files else None


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The flags both commands share, RecBole's names and defaults."""
    plugins = registry.plugin_models()
    listing = "\n".join(
        f"  {name:<12} {plugin.model_class.__doc__.strip().splitlines()[0] if plugin.model_class.__doc__ else ''}"
        for name, plugin in sorted(plugins.items())
    )
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description + " Any other --key=value sets a RecBole config key "
        "(e.g. --epochs=5 --train_batch_size=512)." + TRUST_HELP,
        epilog=f"plugin models:\n{listing or '  (none registered)'}\n"
        "every RecBole built-in model name works as well (SASRec, GRU4Rec, BPR, ...).\n"
        f"buildable datasets: {', '.join(sorted(registry.DATASET_BUILDERS))} "
        "(built from installed data on first use).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_model_and_config_arguments(parser)
    parser.add_argument("--nproc", type=int, default=1, help="number of processes on this machine")
    parser.add_argument("--ip", type=str, default="localhost", help="ip of the master node")
    parser.add_argument("--port", type=str, default="5678", help="port of the master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of jobs")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank offset of this group")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "run_recbole",
        "Train and evaluate a recommender with RecBole, including recbole-mmm4rec's plugin "
        "models. --pretrained=FILE.pth starts from a checkpoint's transferable weights.",
    )
    add_dataset_argument(parser)
    return parser


def build_pretrain_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "run_pretrain",
        "Pre-train a model on one or several datasets (domains, merged with their item and user "
        "tokens namespaced), on every interaction, with a checkpoint every save_step epochs; "
        "a re-run with the same settings resumes. --nproc, --world_size, --ip and --port run "
        "DistributedDataParallel (gloo on CPU, NCCL on GPUs).",
    )
    parser.add_argument("--datasets", "-d", type=str, required=True, help="dataset names, separated by commas")
    return parser


def format_result_table(title: str, result: dict) -> str:
    """A two-column plain-text table of metric -> value."""
    width = max(len(name) for name in result) if result else 6
    lines = [title, f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in result.items()]
    return "\n".join(lines)


def run_recbole_main(argv: Sequence[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.nproc != 1 or args.world_size > 0:
        raise SystemExit(
            "run_recbole: multi-process training (--nproc, --world_size) is not supported yet by "
            "recbole-mmm4rec (RecBole 1.2.1's own path is NCCL/CUDA only); run a single process."
        )
    from recbole_mmm4rec.quick_start import run_recbole

    keep_freed_memory()
    model, dataset = model_and_dataset(args)
    try:
        result = run_recbole(model=model, dataset=dataset, config_file_list=config_file_list(args), cmd_args=overrides)
    except input_errors() as error:
        raise SystemExit(f"run_recbole: {error}") from None
    model, dataset = result["model"], result["dataset"]
    for title, metrics in (("best validation", result["best_valid_result"]), ("test", result["test_result"])):
        if metrics:  # None without validation data or with eval_step=0
            print(format_result_table(f"{model} on {dataset}: {title}", metrics))
    print(
        f"{model}: {result['parameters']:,} trainable parameters, {result['epochs_trained']} epochs "
        f"(best validation at epoch {result['best_epoch']}, counted from 0 as in RecBole's log), "
        f"{result['seconds_per_epoch']:.1f} s/epoch"
    )
    return 0


def run_pretrain_main(argv: Sequence[str] | None = None) -> int:
    args, overrides = build_pretrain_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    from recbole_mmm4rec.pretrain import launch_pretrain

    keep_freed_memory()
    model = args.model or "BPR"
    try:
        result = launch_pretrain(
            model=model,
            datasets=[name.strip() for name in args.datasets.split(",") if name.strip()],
            config_file_list=config_file_list(args),
            cmd_args=overrides,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
        )
    except input_errors() as error:
        raise SystemExit(f"run_pretrain: {error}") from None
    if result is not None:
        resumed = f", resumed from {result['resumed_from']}" if result["resumed_from"] else ""
        print(
            f"{model} pre-trained on {args.datasets}: {result['epochs_trained']} epochs this run{resumed}, "
            f"{result['seconds_per_epoch']:.1f} s/epoch; checkpoint {result['checkpoint']}\n"
            f"per-epoch records: {result['epoch_history_file']}"
        )
    return 0


def build_hyper_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_hyper",
        description="Hyper-parameter search with Ray Tune for recbole-mmm4rec's models and RecBole's. "
        "Any other --key=value sets a fixed RecBole config key for every trial (e.g. --epochs=5)." + TRUST_HELP,
        epilog="space files: RecBole's .hyper lines ('learning_rate loguniform -9.21,-4.61', "
        "'hidden_size choice [32, 64]', 'dropout_prob uniform 0.1,0.5', 'n_layers quniform 1,3,1') "
        "or the same kinds as YAML (kind: {name: values}); loguniform bounds are natural logs, as in "
        "RecBole. Outputs go to <storage_path>/<name>: results.csv, best.yaml, Ray's trial folders.",
        allow_abbrev=False,
    )
    add_model_and_config_arguments(parser)
    add_dataset_argument(parser)
    parser.add_argument("--params_file", type=str, required=True, help="search space: .hyper or .yaml")
    parser.add_argument("--num_samples", type=int, default=1, help="trials (per grid point with --algo=exhaustive)")
    parser.add_argument("--algo", choices=("random", "exhaustive"), default="random",
                        help="random: sample every parameter; exhaustive: try every `choice` value")
    parser.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                        help="asha stops trials that lag at its rungs; fifo runs every trial to the end")
    parser.add_argument("--grace_period", type=int, default=1, help="ASHA: evaluations before a trial may be stopped")
    parser.add_argument("--reduction_factor", type=int, default=2, help="ASHA: 1/this of the trials go on at each rung")
    parser.add_argument("--cpus_per_trial", type=float, default=1.0, help="CPUs Ray reserves per trial (its torch threads)")
    parser.add_argument("--gpus_per_trial", type=float, default=0.0, help="GPUs per trial; 0 trains on CPU")
    parser.add_argument("--max_concurrent", type=int, default=None, help="at most this many trials at once")
    parser.add_argument("--address", type=str, default=None,
                        help="host:port of a Ray cluster (`ray start --head`); default: a local Ray on this machine")
    parser.add_argument("--storage_path", type=str, default="ray_results", help="folder of the searches")
    parser.add_argument("--name", type=str, default=None, help="the search's folder name (default <model>-<dataset>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted search --name (same command)")
    return parser


def run_hyper_main(argv: Sequence[str] | None = None) -> int:
    args, overrides = build_hyper_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    from recbole_mmm4rec.search_space import SearchSpaceError
    from recbole_mmm4rec.tuning import SearchError, SearchOptions, format_table, prepare_search, run_search

    model, dataset = model_and_dataset(args)
    options = SearchOptions(
        **{name: getattr(args, name) for name in SearchOptions.__dataclass_fields__}
    )
    try:
        setup = prepare_search(model, dataset, args.params_file, config_file_list(args), cmd_args=overrides, options=options)
        result = run_search(setup, options)
    except (SearchError, SearchSpaceError) as error:
        raise SystemExit(f"run_hyper: {error}") from None
    print(format_table(result.rows))
    print(f"results: {result.results_csv}")
    if result.best_config_file is None:
        print("no trial completed: no best configuration (see the error column)")
        return 1
    print(f"best configuration: {result.best_config_file} (run_recbole --config_files={result.best_config_file})")
    return 0


def build_benchmark_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_benchmark",
        description="Several models side by side on one dataset: the same split, evaluator and early "
        "stopping, several seeds each; mean and std of every metric, epochs and time to the best "
        "validation, s/epoch, peak memory and parameters. Any other --key=value sets a RecBole config "
        "key for every run (e.g. --epochs=30 --stopping_step=3)." + TRUST_HELP,
        epilog="--models takes RecBole's built-in names and this package's, with optional settings per "
        "variant: --models='MMM4Rec,MMM4Rec[use_item_id=False],SASRec,GRU4Rec,UniSRec'. Finished runs "
        "are kept in <output>/runs and reused by a re-run with the same settings; a failed run is "
        "reported in the table and retried next time.",
        allow_abbrev=False,
    )
    add_dataset_argument(parser)
    parser.add_argument("--models", type=str, required=True, help="variants, separated by commas")
    parser.add_argument("--seeds", type=str, default="3", help="a count (3: the config's seed, seed+1, seed+2) or a comma list of seeds (one seed: --seeds=2020,)")
    parser.add_argument("--pretrained", type=str, default=None,
                        help="MODEL=checkpoint.pth[,MODEL=...]: add each model's fine-tuned variant beside it")
    parser.add_argument("--config_files", type=str, default=None, help="config files shared by every run, separated by spaces")
    parser.add_argument("--output", type=str, default=None, help="results folder (default benchmark_results/<dataset>)")
    parser.add_argument("--runs", type=str, default=None,
                        help="folder of finished runs, may be shared by several benchmarks (default <output>/runs)")
    parser.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing: write the outputs from the finished runs, the others shown as not run")
    parser.add_argument("--threads_per_run", type=int, default=None,
                        help="torch threads per run (default torch's; with --workers=N use cores / N)")
    return parser


def run_benchmark_main(argv: Sequence[str] | None = None) -> int:
    args, overrides = build_benchmark_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    from recbole_mmm4rec.benchmark import BenchmarkError, run_benchmark

    try:
        result = run_benchmark(
            dataset=args.dataset if args.dataset or args.config_files else "ml-100k",
            models=args.models,
            seeds=args.seeds,
            pretrained=args.pretrained,
            config_file_list=config_file_list(args),
            cmd_args=overrides,
            output_dir=args.output,
            runs_dir=args.runs,
            workers=args.workers,
            threads_per_run=args.threads_per_run,
            report_only=args.report_only,
        )
    except BenchmarkError as error:
        raise SystemExit(f"run_benchmark: {error}") from None
    print(result.table)
    written = ["results.md", "results.json", *(os.path.basename(path) for path in result.plots)]
    print(f"results: {result.output_dir} ({', '.join(written)})")
    return 1 if any("error" in run for run in result.runs) else 0


def _bool(text: str) -> bool:
    """RecBole's spelling of booleans on the command line: --exclude_history=False."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected True or False, found {text!r}")
    return text.lower() == "true"


def build_recommend_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_recommend",
        description="Top-k recommendations from a checkpoint of a sequential model (MMM4Rec, UniSRec, SASRec, "
        "...), for users of its dataset or for given histories; item tokens in and out.",
        epilog="histories file: one JSON object per line, {\"id\": \"a\", \"items\": [\"50\", \"172\"], "
        "\"timestamps\": [881250949, 881251949]}; timestamps are required for models that read time "
        "(MMM4Rec with time_channel). New items: a folder with <name>.<modality>.npy and <name>.<modality>.tokens "
        "for each modality the model reads (the format of recbole_mmm4rec.data.write_item_features).",
        allow_abbrev=False,
    )
    parser.add_argument("--checkpoint", type=str, required=True, help="a checkpoint saved by run_recbole (saved/*.pth)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--users", type=str, help="user tokens of the checkpoint's dataset, separated by commas")
    source.add_argument("--histories", type=str, help="JSONL file of histories (see below)")
    source.add_argument("--all_users", action="store_true", help="every user of the checkpoint's dataset")
    parser.add_argument("--topk", type=int, default=10, help="items per history (default 10)")
    parser.add_argument("--exclude_history", type=_bool, default=True,
                        help="True (default): never recommend an item of the history (of the user's interactions for --users)")
    parser.add_argument("--output", type=str, default=None, help="FILE.jsonl or FILE.csv (default: JSONL on stdout)")
    parser.add_argument("--strict", action="store_true", help="an unknown item token in a history is an error (default: skipped and counted)")
    parser.add_argument("--new_items", type=str, default=None,
                        help="folder of feature files of items absent from the checkpoint's catalogue: they join the candidates")
    parser.add_argument("--batch_size", type=int, default=256, help="histories scored at once (default 256)")
    parser.add_argument("--trust_checkpoint", type=_bool, default=False,
                        help="True: unpickle the checkpoint and its saved data without restriction (default False)")
    return parser


def run_recommend_main(argv: Sequence[str] | None = None) -> int:
    args = build_recommend_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from recbole_mmm4rec.compat import UntrustedCheckpointError
    from recbole_mmm4rec.data import FeatureFileError
    from recbole_mmm4rec.recommend import (
        OUTPUT_FORMATS, Recommender, RecommendError, format_recommendations, read_histories, write_recommendations,
    )

    if args.output and os.path.splitext(args.output)[1].lower() not in OUTPUT_FORMATS:
        raise SystemExit(f"run_recommend: --output={args.output}: expected a .jsonl or .csv file name")
    try:
        recommender = Recommender.from_checkpoint(args.checkpoint, new_items=args.new_items, trust=args.trust_checkpoint)
        options = dict(k=args.topk, exclude_history=args.exclude_history, batch_size=args.batch_size, show_progress=True)
        if args.histories:
            histories = read_histories(args.histories)
            ids = [history.id for history in histories]
            results = recommender.recommend(histories, strict=args.strict, **options)
        else:
            ids = recommender.users() if args.all_users else [user.strip() for user in args.users.split(",") if user.strip()]
            results = recommender.recommend_users(ids, **options)
    except (RecommendError, FeatureFileError, FileNotFoundError, UntrustedCheckpointError) as error:
        raise SystemExit(f"run_recommend: {error}") from None
    if args.output:
        write_recommendations(args.output, ids, results)
    else:
        sys.stdout.write(format_recommendations(ids, results, ".jsonl"))
    skipped = f"; {recommender.skipped_items} unknown item tokens skipped" if recommender.skipped_items else ""
    print(f"run_recommend: top-{args.topk} for {len(ids)} histories -> {args.output or 'stdout'}{skipped}", file=sys.stderr)
    for note in recommender.notes:
        print(f"run_recommend: note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_recbole_main())
