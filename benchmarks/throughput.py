"""Training and inference speed of MMM4Rec beside SASRec on ml-100k-mm, same batches, same machine.

    .venv/bin/python benchmarks/throughput.py [--lengths 20,50] [--models MMM4Rec,SASRec]
    .venv/bin/python benchmarks/throughput.py --measure MMM4Rec 50 keep --profile   # where the time goes

Both models use properties/quick_start/demo.yaml (hidden 64; SASRec 2 layers x 2 heads; MMM4Rec
1 layer, 4 heads x 32, d_state 32, 4 groups, text + kg, with ID), batch --batch, history length
L. For each (allocator, L, model), in a fresh process: the wall time of one whole training epoch
through RecBole's trainer (data loading included), the median latency of a full-sort prediction
for 256 test users, the trainable parameters and the process's peak resident memory. The
allocator is glibc's default or freed memory kept for reuse (recbole_mmm4rec.allocator, what
the command-line tools use). Writes its table into BENCHMARKS.md and the raw results to
benchmarks/results/throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from report import ROOT, machine, markdown_table, replace_section, write_results

INFERENCE_USERS = 256


def measure(model_name: str, length: int, allocator: str, batch: int, profile: bool) -> dict:
    if allocator == "keep":
        from recbole_mmm4rec.allocator import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("throughput: could not keep freed memory (not glibc, or MALLOC_* set)")
    import torch
    from recbole.data import data_preparation

    from recbole_mmm4rec.config import PluginConfig
    from recbole_mmm4rec.quick_start import build_model_and_trainer, create_dataset

    config = PluginConfig(
        model=model_name,
        dataset="ml-100k-mm",
        config_file_list=[os.path.join(ROOT, "properties", "quick_start", "demo.yaml")],
        config_dict={
            "MAX_ITEM_LIST_LENGTH": length,
            "train_batch_size": batch,
            "eval_batch_size": INFERENCE_USERS,
            "show_progress": False,
            "save_dataset": False,
            "save_dataloaders": False,
        },
    )
    dataset = create_dataset(config)
    train_data, _, test_data = data_preparation(config, dataset)
    model, trainer_class = build_model_and_trainer(config, train_data)
    trainer = trainer_class(config, model)
    if profile:
        return profile_steps(model, trainer, train_data)

    start = time.perf_counter()
    trainer._train_epoch(train_data, epoch_idx=0, show_progress=False)
    epoch_seconds = time.perf_counter() - start

    users = next(iter(test_data))[0].to(config["device"])
    model.eval()
    latencies = []
    with torch.no_grad():
        for _ in range(6):
            start = time.perf_counter()
            scores = model.full_sort_predict(users)
            latencies.append(time.perf_counter() - start)
    assert scores.shape == (INFERENCE_USERS, dataset.item_num)
    return {
        "epoch_seconds": epoch_seconds,
        "training_rows": len(train_data.dataset),
        "full_sort_ms": 1000 * statistics.median(latencies[1:]),  # the first call warms up
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def profile_steps(model, trainer, train_data, steps: int = 3) -> dict:
    """torch.profiler over a few training steps: the operators that take the time."""
    from torch.profiler import ProfilerActivity, profile

    batches = iter(train_data)
    model.train()

    def step():
        trainer.optimizer.zero_grad()
        model.calculate_loss(next(batches)).backward()
        trainer.optimizer.step()

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=30))
    return {}


def table(results: list[dict], command: str, batch: int) -> str:
    by = {(r["allocator"], r["length"], r["model"]): r for r in results}
    allocators = sorted({r["allocator"] for r in results}, reverse=True)  # keep, default
    lengths = sorted({r["length"] for r in results})
    models = list(dict.fromkeys(r["model"] for r in results))
    columns = ["allocator", "L", "model", "s/epoch", "x SASRec", "full-sort 256 users (ms)", "trainable parameters",
               "peak RSS (MiB)"]
    rows = []
    for allocator in allocators:
        for length in lengths:
            for model in models:
                r = by.get((allocator, length, model))
                if r is None:
                    continue
                sasrec = by.get((allocator, length, "SASRec"))
                ratio = f"{r['epoch_seconds'] / sasrec['epoch_seconds']:.2f}" if sasrec else "-"
                rows.append([allocator, length, model, f"{r['epoch_seconds']:.1f}", ratio, f"{r['full_sort_ms']:.1f}",
                             f"{r['parameters']:,}", f"{r['peak_rss_mib']:.0f}"])
    header = f"`{command}` on {machine()}; batch {batch}, properties/quick_start/demo.yaml sizes."
    return header + "\n\n" + markdown_table(columns, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="20,50")
    parser.add_argument("--models", default="MMM4Rec,SASRec")
    parser.add_argument("--allocators", default="keep,default")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--measure", nargs=3, metavar=("MODEL", "LENGTH", "ALLOCATOR"), help="one run, in this process")
    parser.add_argument("--profile", action="store_true", help="with --measure: profile a few steps instead")
    args = parser.parse_args()
    if args.measure:
        model, length, allocator = args.measure
        print(json.dumps(measure(model, int(length), allocator, args.batch, args.profile)))
        return 0

    results = []
    for allocator in args.allocators.split(","):
        for length in [int(v) for v in args.lengths.split(",")]:
            for model in args.models.split(","):
                out = subprocess.run(
                    [sys.executable, __file__, "--measure", model, str(length), allocator, "--batch", str(args.batch)],
                    capture_output=True, text=True,
                )
                if out.returncode:
                    raise SystemExit(f"throughput: {model} at L={length} failed:\n{out.stderr[-3000:]}")
                result = {"allocator": allocator, "length": length, "model": model,
                          **json.loads(out.stdout.strip().splitlines()[-1])}
                print(json.dumps(result), flush=True)
                results.append(result)
    write_results("throughput", results)
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
    replace_section("throughput", "Training and inference speed: MMM4Rec beside SASRec", table(results, command.strip(), args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
