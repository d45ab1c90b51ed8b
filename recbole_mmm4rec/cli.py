"""``run_recbole``: RecBole's command line, for RecBole's models and this package's."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from recbole_mmm4rec import registry
from recbole_mmm4rec.allocator import keep_freed_memory


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
        "(e.g. --epochs=5 --train_batch_size=512).",
        epilog=f"plugin models:\n{listing or '  (none registered)'}\n"
        "every RecBole built-in model name works as well (SASRec, GRU4Rec, BPR, ...).\n"
        f"buildable datasets: {', '.join(sorted(registry.DATASET_BUILDERS))} "
        "(built from installed data on first use).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--model", "-m", type=str, default="BPR", help="name of the model")
    parser.add_argument(
        "--config_files", type=str, default=None, help="config files, separated by spaces"
    )
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
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of the dataset")
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
    result = run_recbole(
        model=args.model,
        dataset=args.dataset,
        config_file_list=args.config_files.strip().split(" ") if args.config_files else None,
        cmd_args=overrides,
    )
    for title, metrics in (("best validation", result["best_valid_result"]), ("test", result["test_result"])):
        if metrics:  # None without validation data or with eval_step=0
            print(format_result_table(f"{args.model} on {args.dataset}: {title}", metrics))
    print(
        f"{args.model}: {result['parameters']:,} trainable parameters, {result['epochs_trained']} epochs "
        f"(best validation at epoch {result['best_epoch']}, counted from 0 as in RecBole's log), "
        f"{result['seconds_per_epoch']:.1f} s/epoch"
    )
    return 0


def run_pretrain_main(argv: Sequence[str] | None = None) -> int:
    args, overrides = build_pretrain_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    from recbole_mmm4rec.pretrain import launch_pretrain

    keep_freed_memory()
    result = launch_pretrain(
        model=args.model,
        datasets=[name.strip() for name in args.datasets.split(",") if name.strip()],
        config_file_list=args.config_files.strip().split(" ") if args.config_files else None,
        cmd_args=overrides,
        nproc=args.nproc,
        world_size=args.world_size,
        ip=args.ip,
        port=args.port,
        group_offset=args.group_offset,
    )
    if result is not None:
        resumed = f", resumed from {result['resumed_from']}" if result["resumed_from"] else ""
        print(
            f"{args.model} pre-trained on {args.datasets}: {result['epochs_trained']} epochs this run{resumed}, "
            f"{result['seconds_per_epoch']:.1f} s/epoch; checkpoint {result['checkpoint']}\n"
            f"per-epoch records: {result['epoch_history_file']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_recbole_main())
