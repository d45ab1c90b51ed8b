"""Sequence-mode training (``train_mode: sequence``) beside RecBole's prefix rows: epoch time, peak
memory, the training data's size, and pre-training throughput, each cell in a fresh process.

    .venv/bin/python benchmarks/sequence_training.py [--lengths 20,50] [--batches 12] [--skip_quality] [--skip_speed] [--skip_memory] [--skip_pretrain]

A skipped part keeps its results from the last run (benchmarks/results/sequence_training.json).

1. Speed, ml-100k-mm, properties/quick_start/demo.yaml (hidden 64, batch 2048) and the paper's
   sizes (hidden 256, 8 heads x 64, d_state 64, 8 groups, FFN 256; MMM4Rec only), L = 20 and 50:
   MMM4Rec in sequence and prefix mode, UniSRec in sequence mode, SASRec (RecBole's prefix
   rows). One epoch through RecBole's trainer; an epoch of more than ``--batches`` batches is
   timed on its first ``--batches`` batches after one warm-up batch and scaled to the epoch's
   batch count (marked "est."). Peak memory is the process's VmHWM.
2. Training data of ml-1m-mm (1 M interactions) at L = 20 in each mode: the bytes of the built
   training split (its tensors, the shared interaction table and the windows) and the process's
   VmHWM after building, then projected to the paper's pre-training corpus (14 M interactions):
   bytes per training target times 14 M.
3. Pre-training throughput on ml-1m-mm, sequence mode, properties/pretrain/MMM4Rec.yaml under
   demo.yaml (in-batch cross-entropy, micro-batches of demo.yaml's 2,048 targets, 8 per step): training targets per second and
   minutes per epoch, at demo and paper sizes, timed on ``--batches`` micro-batches.

4. Quality, 3 seeds (``run_benchmark``, demo sizes and early stopping as benchmarks/side_by_side.py,
   sharing its runs folder): MMM4Rec in prefix and in sequence mode, validation and test NDCG@10,
   epochs to the best validation.

Writes benchmarks/results/sequence_training.json and the "sequence_training" and
"sequence_quality" sections of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from report import HERE, ROOT, machine, markdown_table, replace_section, write_results

DEMO_YAML = os.path.join(ROOT, "properties", "quick_start", "demo.yaml")
PAPER_SIZES = {"hidden_size": 256, "head_dim": 64, "d_state": 64, "n_groups": 8, "inner_size": 256}
PAPER_CORPUS_INTERACTIONS = 14_000_000
# (label, model, train_mode, sizes)
SPEED_CELLS = [
    ("MMM4Rec sequence", "MMM4Rec", "sequence", "demo"),
    ("MMM4Rec prefix", "MMM4Rec", "prefix", "demo"),
    ("UniSRec sequence", "UniSRec", "sequence", "demo"),
    ("SASRec (prefix)", "SASRec", "prefix", "demo"),
    ("MMM4Rec sequence", "MMM4Rec", "sequence", "paper"),
    ("MMM4Rec prefix", "MMM4Rec", "prefix", "paper"),
]


def peak_rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _config(model: str, dataset: str, mode: str, sizes: str, length: int, extra: dict | None = None, pretrain: bool = False):
    from recbole_mmm4rec.config import PluginConfig
    from recbole_mmm4rec.pretrain import pretrain_config

    settings = {"MAX_ITEM_LIST_LENGTH": length, "show_progress": False, "save_dataset": False, "save_dataloaders": False,
                **(PAPER_SIZES if sizes == "paper" else {}), **(extra or {})}
    if model != "SASRec":
        settings["train_mode"] = mode
    if pretrain:
        return pretrain_config(model, [dataset], [DEMO_YAML], settings)
    return PluginConfig(model=model, dataset=dataset, config_file_list=[DEMO_YAML], config_dict=settings)


def _timed_epoch(trainer, model, train_data, batches: int) -> tuple[float, bool]:
    """Seconds of one training epoch; more than ``batches`` batches: timed on ``batches`` after a
    warm-up one, scaled to the epoch (True)."""
    if len(train_data) <= batches:
        start = time.perf_counter()
        trainer._train_epoch(train_data, epoch_idx=0, show_progress=False)
        return time.perf_counter() - start, False
    model.train()
    iterator = iter(train_data)
    times = []
    for index in range(batches + 1):
        start = time.perf_counter()
        interaction = next(iterator).to(model.device)
        trainer.optimizer.zero_grad()
        model.calculate_loss(interaction).backward()
        trainer.optimizer.step()
        if index:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times) * len(train_data), True


def _targets(train_data) -> int:
    dataset = train_data._dataset
    return len(dataset.inter_feat)  # one row per training target in both modes


def measure_speed(model_name: str, mode: str, sizes: str, length: int, batches: int) -> dict:
    import torch

    from recbole_mmm4rec.quick_start import build_model_and_trainer, create_dataset, prepare_data

    torch.set_num_threads(1)
    config = _config(model_name, "ml-100k-mm", mode, sizes, length)
    dataset = create_dataset(config)
    train_data, _, _ = prepare_data(config, dataset)
    model, trainer_class = build_model_and_trainer(config, train_data)
    trainer = trainer_class(config, model)
    seconds, estimated = _timed_epoch(trainer, model, train_data, batches)
    return {"epoch_seconds": seconds, "estimated": estimated, "batches": len(train_data), "samples": len(train_data._dataset),
            "targets": _targets(train_data), "peak_rss_mib": peak_rss_mib()}


def _tensor_bytes(value) -> int:
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if hasattr(value, "interaction"):
        return _tensor_bytes(value.interaction)
    return 0


def measure_memory(mode: str, length: int) -> dict:
    from recbole_mmm4rec.quick_start import create_dataset

    config = _config("MMM4Rec", "ml-1m-mm", mode, "demo", length)
    started = time.perf_counter()
    dataset = create_dataset(config)
    train = dataset.build()[0]
    seconds = time.perf_counter() - started
    train_bytes = _tensor_bytes(train.inter_feat) + _tensor_bytes(train.windows or {}) + _tensor_bytes(train.interaction_sequences or {})
    return {"train_bytes": train_bytes, "targets": len(train.inter_feat), "samples": len(train),
            "interactions": len(dataset.interaction_sequences) if dataset.interaction_sequences is not None else None,
            "build_seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def measure_pretrain(sizes: str, batches: int) -> dict:
    import torch

    from recbole_mmm4rec.pretrain import checkpoint_pattern, prepare_domains
    from recbole_mmm4rec.quick_start import build_model_and_trainer, create_dataset, training_loader
    from recbole_mmm4rec.trainer import ResumablePretrainTrainer

    torch.set_num_threads(1)
    config = _config("MMM4Rec", "ml-1m-mm", "sequence", sizes, 20, pretrain=True)
    prepare_domains(["ml-1m-mm"], os.path.dirname(config["data_path"]), config["modalities"] or [])
    train = create_dataset(config).build()[0]
    train_data = training_loader(config, train, shuffle=True)
    model, _ = build_model_and_trainer(config, train_data)
    trainer = ResumablePretrainTrainer(config, model, checkpoint_pattern(config))
    model.train()
    iterator = iter(train_data)
    seconds, targets = 0.0, 0
    for index in range(batches + 1):
        start = time.perf_counter()
        interaction = next(iterator)
        loss = model.calculate_loss(interaction)
        loss.backward()
        if (index + 1) % config["accumulation_steps"] == 0:
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()
        if index:
            seconds += time.perf_counter() - start
            targets += int((interaction[model.NEXT_ITEMS] > 0).sum())
    epoch_targets = len(train.inter_feat)
    return {"targets_per_second": targets / seconds, "epoch_minutes": epoch_targets / (targets / seconds) / 60,
            "epoch_targets": epoch_targets, "windows": len(train), "batch_windows": train_data.step, "batch_targets": config["train_batch_size"],
            "peak_rss_mib": peak_rss_mib()}


def _run(*arguments: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"sequence_training {' '.join(arguments)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        sasrec = next((s for s in results if s["label"].startswith("SASRec") and s["length"] == r["length"]), None)
        prefix = next((s for s in results if s["label"] == "MMM4Rec prefix" and s["length"] == r["length"] and s["sizes"] == r["sizes"]), None)
        rows.append([
            r["sizes"], r["length"], r["label"], f"{r['epoch_seconds']:.1f}" + (" est." if r["estimated"] else ""),
            f"{r['epoch_seconds'] / sasrec['epoch_seconds']:.2f}" if sasrec else "-",
            f"{prefix['epoch_seconds'] / r['epoch_seconds']:.1f}" if prefix and r["label"] == "MMM4Rec sequence" else "-",
            f"{r['samples']:,}", r["batches"], f"{r['peak_rss_mib']:.0f}",
        ])
    return markdown_table(["sizes", "L", "model, training", "s/epoch", "x SASRec", "prefix / sequence", "samples (rows or windows)",
                           "batches", "peak RSS (MiB)"], rows)


def memory_table(results: list[dict]) -> str:
    rows = []
    prefix = next(r for r in results if r["mode"] == "prefix")
    for r in results:
        per_target = r["train_bytes"] / r["targets"]
        rows.append([r["mode"], f"{r['targets']:,}", f"{r['samples']:,}", f"{r['train_bytes'] / 2**20:.1f}",
                     f"{prefix['train_bytes'] / r['train_bytes']:.1f}", f"{r['peak_rss_mib']:.0f}",
                     f"{per_target:.1f}", f"{per_target * PAPER_CORPUS_INTERACTIONS / 2**30:.2f}", f"{r['build_seconds']:.0f}"])
    return markdown_table(["train_mode", "training targets", "samples", "training data (MiB)", "prefix / this", "VmHWM (MiB)",
                           "bytes per target", "14 M-interaction corpus (GiB)", "build (s)"], rows)


def pretrain_table(results: list[dict]) -> str:
    rows = [[r["sizes"], f"{r['targets_per_second']:,.0f}", f"{r['epoch_minutes']:.1f}", f"{r['epoch_targets']:,}", f"{r['windows']:,}",
             f"{r['batch_targets']:,} targets = {r['batch_windows']} windows", f"{r['peak_rss_mib']:.0f}"] for r in results]
    return markdown_table(["sizes", "targets/s", "min/epoch", "targets per epoch", "windows", "micro-batch", "peak RSS (MiB)"], rows)


def quality(command: str, seeds: str) -> None:
    from recbole_mmm4rec.benchmark import run_benchmark

    output = os.path.join(HERE, "results", "side_by_side", "ml-100k-mm-sequence")
    result = run_benchmark(
        dataset="ml-100k-mm", models="MMM4Rec[train_mode=prefix],MMM4Rec[train_mode=sequence]", seeds=seeds, config_file_list=[DEMO_YAML],
        config_dict={"epochs": 30, "topk": [10, 20, 50]}, runs_dir=os.path.join(HERE, "results", "side_by_side", "runs"),
        output_dir=output, workers=1, threads_per_run=1,
    )
    folder = os.path.relpath(output, ROOT)
    replace_section(
        "sequence_quality", "Sequence-mode training: quality against prefix rows (run_benchmark)",
        f"`{command}` on {machine()}; each run in its own process with one torch thread, one at a time, "
        f"demo sizes (hidden 64, L = 20, batch 2048 targets: rows, or the windows that hold as many; window overlap 10), early stopping after 3 "
        f"evaluations without a better validation NDCG@10. Mean ± sample std over seeds {seeds}.\n\n{result.table}\n\n"
        f"Raw runs: `{folder}/results.json`.\n\n![validation NDCG@10 per epoch]({folder}/valid_curves.png)",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="20,50")
    parser.add_argument("--batches", type=int, default=12, help="timed batches of an epoch longer than that")
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--skip_pretrain", action="store_true")
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--quality_seeds", default="2020,2021,2022")
    parser.add_argument("--skip_quality", action="store_true")
    parser.add_argument("--speed", nargs=4, metavar=("MODEL", "MODE", "SIZES", "LENGTH"), help="one cell, in this process")
    parser.add_argument("--memory", nargs=2, metavar=("MODE", "LENGTH"), help="one cell, in this process")
    parser.add_argument("--pretrain", metavar="SIZES", help="one cell, in this process")
    args = parser.parse_args()
    if args.speed:
        model, mode, sizes, length = args.speed
        print(json.dumps(measure_speed(model, mode, sizes, int(length), args.batches)))
        return 0
    if args.memory:
        print(json.dumps(measure_memory(args.memory[0], int(args.memory[1]))))
        return 0
    if args.pretrain:
        print(json.dumps(measure_pretrain(args.pretrain, args.batches)))
        return 0

    command = ("python benchmarks/sequence_training.py " + " ".join(sys.argv[1:])).strip()
    if not args.skip_quality:
        quality(command, args.quality_seeds)
    # A part that is skipped keeps its previous results.
    path = os.path.join(HERE, "results", "sequence_training.json")
    results = json.load(open(path, encoding="utf-8")) if os.path.exists(path) else {"speed": [], "memory": [], "pretrain": []}
    if not args.skip_speed:
        results["speed"] = []
    for length in [] if args.skip_speed else [int(v) for v in args.lengths.split(",")]:
        for label, model, mode, sizes in SPEED_CELLS:
            cell = {"label": label, "length": length, "sizes": sizes,
                    **_run("--speed", model, mode, sizes, str(length), "--batches", str(args.batches))}
            print(json.dumps(cell), flush=True)
            results["speed"].append(cell)
    if not args.skip_memory:
        results["memory"] = []
        for mode in ("sequence", "prefix"):
            cell = {"mode": mode, **_run("--memory", mode, "20")}
            print(json.dumps(cell), flush=True)
            results["memory"].append(cell)
    if not args.skip_pretrain:
        results["pretrain"] = []
        for sizes in ("demo", "paper"):
            cell = {"sizes": sizes, **_run("--pretrain", sizes, "--batches", str(args.batches))}
            print(json.dumps(cell), flush=True)
            results["pretrain"].append(cell)
    for part, skipped in (("speed", args.skip_speed), ("memory", args.skip_memory), ("pretrain", args.skip_pretrain)):
        if not skipped:
            results.setdefault("commands", {})[part] = f"`{command}` on {machine()}"
    write_results("sequence_training", results)
    commands = results.get("commands", {})
    body = ("One torch thread per cell, each in a fresh process, the other core busy with a benchmark run "
            "(ratios are within one run).\n")
    if results["speed"]:
        body += (f"\nSpeed on ml-100k-mm, {commands.get('speed')} (batch 2048 targets: prefix rows, or the windows "
                 f"holding that many; window overlap L/2):\n\n{speed_table(results['speed'])}\n")
    if results["memory"]:
        body += (f"\nTraining data of ml-1m-mm at L = 20, {commands.get('memory')} (demo sizes; the model does not "
                 f"matter):\n\n{memory_table(results['memory'])}\n")
    if results["pretrain"]:
        body += (f"\nPre-training throughput, ml-1m-mm, sequence mode, in-batch cross-entropy, "
                 f"{commands.get('pretrain')}:\n\n{pretrain_table(results['pretrain'])}\n")
    replace_section("sequence_training", "Sequence-mode training: speed, memory, pre-training throughput", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
