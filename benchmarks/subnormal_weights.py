"""Why fine-tuning from a long pre-training is slower per epoch: subnormal weights.

    .venv/bin/python benchmarks/subnormal_weights.py [--checkpoints 1,5,10,20] [--steps 6] [--repeats 3]

MMM4Rec on the transfer study's target (ml-1m-mm-since1997, properties/quick_start/demo.yaml,
one torch thread), from a fresh initialisation and from the study's MMM4Rec pre-training checkpoints
after ``--checkpoints`` epochs (run benchmarks/transfer.py first). For each start: how many weights are subnormal
(0 < |w| < 1.18e-38: weight decay shrinks the weights of channels that no longer get a gradient
geometrically towards zero), and the median time of ``--steps`` training steps (forward, backward;
the same batches for every start) with the CPU's flush-to-zero off (IEEE subnormals, the default)
and on (``torch.set_flush_denormal(True)``), interleaved ``--repeats`` times so that both see the
same load; and how much the mean loss of a step differs between the two modes. Writes its table into
BENCHMARKS.md and the raw results to benchmarks/results/subnormal_weights.json.
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time

from report import ROOT, machine, markdown_table, replace_section, write_results

TARGET = "ml-1m-mm-since1997"


def subnormal_count(model) -> tuple[int, int]:
    """Subnormal and total floating-point parameter values."""
    import torch

    tiny = torch.finfo(torch.float32).tiny
    subnormal = total = 0
    for parameter in model.parameters():
        magnitude = parameter.detach().abs()
        subnormal += int(((magnitude > 0) & (magnitude < tiny)).sum())
        total += parameter.numel()
    return subnormal, total


def timed_steps(model, batches: list) -> tuple[float, float]:
    """Seconds of forward + backward over ``batches``, and the summed loss."""
    start, total = time.perf_counter(), 0.0
    for interaction in batches:
        model.zero_grad(set_to_none=True)
        loss = model.calculate_loss(interaction)
        loss.backward()
        total += float(loss)
    return time.perf_counter() - start, total


def measure(checkpoint_epochs: list[int], steps: int, repeats: int) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    from recbole.data import data_preparation

    from recbole_mmm4rec.config import PluginConfig
    from recbole_mmm4rec.quick_start import build_model_and_trainer, create_dataset, prepare_model
    from transfer import CHECKPOINTS, FINE_TUNING, SOURCE

    starts = [("fresh initialisation", None)]
    for epochs in checkpoint_epochs:
        found = sorted(glob.glob(os.path.join(CHECKPOINTS, f"MMM4Rec-{SOURCE}-pretrain-*-{epochs}.pth")))
        if len(found) != 1:
            raise SystemExit(f"subnormal_weights: expected one MMM4Rec checkpoint after {epochs} epochs in {CHECKPOINTS}, "
                             f"found {found or 'none'}; run benchmarks/transfer.py first")
        starts.append((f"pre-trained {epochs} epochs", found[0]))
    rows = []
    batches = None
    for label, checkpoint in starts:
        settings = {**FINE_TUNING, "show_progress": False, "save_dataset": False, "save_dataloaders": False,
                    "pretrained": checkpoint}
        config = PluginConfig(model="MMM4Rec", dataset=TARGET, config_dict=settings,
                              config_file_list=[os.path.join(ROOT, "properties", "quick_start", "demo.yaml")])
        torch.manual_seed(2020)
        if batches is None:
            train_data, _, _ = data_preparation(config, create_dataset(config))
            batches = [interaction for _, interaction in zip(range(steps), train_data)]
        model, _ = build_model_and_trainer(config, train_data)
        prepare_model(model, config)
        model.train()
        subnormal, total = subnormal_count(model)
        timed_steps(model, batches[:1])  # untimed: the first step of a model pays for allocations
        seconds = {False: [], True: []}
        losses = {}
        for _ in range(repeats):
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                torch.manual_seed(0)  # the same dropout masks in both modes
                elapsed, losses[flush] = timed_steps(model, batches)
                seconds[flush].append(elapsed)
        torch.set_flush_denormal(False)
        ieee, flushed = statistics.median(seconds[False]), statistics.median(seconds[True])
        rows.append({"start": label, "train_batch_size": config["train_batch_size"], "subnormal_weights": subnormal, "weights": total,
                     "seconds_per_step_ieee": ieee / steps, "seconds_per_step_flush_to_zero": flushed / steps,
                     "slowdown": ieee / flushed, "loss_difference": abs(losses[False] - losses[True]) / steps})
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict], command: str, steps: int, repeats: int) -> str:
    body = markdown_table(
        ["start", "subnormal weights", "s/step, IEEE subnormals", "s/step, flush to zero", "IEEE / flush", "loss difference per step"],
        [[row["start"], f"{row['subnormal_weights']:,} of {row['weights']:,}", f"{row['seconds_per_step_ieee']:.3f}",
          f"{row['seconds_per_step_flush_to_zero']:.3f}", f"{row['slowdown']:.2f}x", f"{row['loss_difference']:.1e}"]
         for row in rows])
    return (f"`{command}` on {machine()}; one torch thread; MMM4Rec at demo sizes (hidden 64) with the fine-tuning "
            f"settings on {TARGET}; {steps} training steps (forward + backward, batch {rows[0]['train_batch_size']:,}), the median of {repeats} "
            "interleaved repeats per mode.\n\n" + body + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default="1,5,10,20", help="pre-training epochs of the checkpoints to measure")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = measure([int(epochs) for epochs in args.checkpoints.split(",")], args.steps, args.repeats)
    command = ("python benchmarks/subnormal_weights.py " + " ".join(sys.argv[1:])).strip()
    write_results("subnormal_weights", {"command": command, "rows": rows})
    replace_section("subnormal_weights", "Subnormal weights: why fine-tuning epochs cost more",
                    table(rows, command, args.steps, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
