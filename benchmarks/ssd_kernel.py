"""ssd_scan (chunked) against the quadratic dual form: forward+backward time, peak memory, accuracy.

    .venv/bin/python benchmarks/ssd_kernel.py [--lengths 20,64,128,256,512,1024] [--batch 16]

At the paper's SSD sizes (8 heads x 64 channels, d_state 64, 8 groups; chunk 64 as MMM4Rec), float32, on
this machine's CPU. Each (length, form) is measured in two fresh processes: peak memory is the
rise of the peak resident set over one forward+backward, with glibc made to return every freed
block of 64 KiB or more (so the resident set follows the live tensors); time is the median of
at least --repeats forward+backward passes after a warm-up, with freed memory kept for reuse as
the command-line tools run (recbole_mmm4rec.allocator). Accuracy is the forward output's largest
error relative to the float64 step-by-step recurrence. Writes its table into BENCHMARKS.md and the raw results
to benchmarks/results/ssd_kernel.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from report import machine, markdown_table, replace_section, write_results

HEADS, HEAD_DIM, STATE, GROUPS = 8, 64, 64, 8
# glibc: every block from 64 KiB up gets its own mapping, returned to the system when freed.
MEMORY_TRACKING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def inputs(batch: int, length: int, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(length)
    shape_bl = (batch, length)
    return dict(
        x=torch.randn(*shape_bl, HEADS, HEAD_DIM, generator=g, dtype=dtype),
        dt=torch.randn(*shape_bl, HEADS, generator=g, dtype=dtype) - 3,  # softplus(dt): Mamba-2's range of steps
        A=-torch.rand(HEADS, generator=g, dtype=dtype) * 15 - 1,
        B=torch.randn(*shape_bl, GROUPS, STATE, generator=g, dtype=dtype),
        C=torch.randn(*shape_bl, GROUPS, STATE, generator=g, dtype=dtype),
        D=torch.randn(HEADS, generator=g, dtype=dtype),
        dt_softplus=True,
    )


def forms(chunk: int):
    from recbole_mmm4rec.kernels import ssd_quadratic, ssd_scan

    return {"scan": lambda i: ssd_scan(chunk_size=chunk, **i), "quadratic": lambda i: ssd_quadratic(**i)}


def reset_peak_rss() -> None:
    """Make the kernel's high-water mark (VmHWM) start again from the current resident set."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kib / 1024


def measure_memory(form: str, batch: int, length: int, chunk: int) -> dict:
    """Peak resident memory added by one forward+backward, after a small warm-up call.

    The parent runs this with glibc told to map every block of 64 KiB or more on its own and to
    give it back when freed, so the resident set follows the live tensors."""
    run = forms(chunk)[form]
    run(leaves_of(inputs(1, 2 * chunk + 1, torch.float32))).sum().backward()  # one-time allocations
    leaves = leaves_of(inputs(batch, length, torch.float32))
    reset_peak_rss()
    baseline = rss_mib("VmRSS")
    run(leaves).sum().backward()
    return {"peak_mib": rss_mib("VmHWM") - baseline}


def measure_time(form: str, batch: int, length: int, chunk: int, repeats: int) -> dict:
    """Median forward+backward time (at least ``repeats`` runs and one second after a warm-up,
    freed memory kept as the command-line tools run), and the forward's relative error."""
    from recbole_mmm4rec.allocator import keep_freed_memory

    keep_freed_memory()
    run = forms(chunk)[form]
    leaves = leaves_of(inputs(batch, length, torch.float32))
    run(leaves).sum().backward()
    times = []
    while len(times) < repeats or sum(times) < 1.0:
        start = time.perf_counter()
        run(leaves).sum().backward()
        times.append(time.perf_counter() - start)
    with torch.no_grad():
        output = run({k: v.detach() if torch.is_tensor(v) else v for k, v in leaves.items()}).double()
    reference = forms_reference(batch, length)
    error = ((output - reference).abs().max() / reference.abs().max()).item()
    return {"seconds": statistics.median(times), "runs": len(times), "relative_error": error}


def leaves_of(values: dict) -> dict:
    return {k: v.requires_grad_(True) if torch.is_tensor(v) else v for k, v in values.items()}


def forms_reference(batch: int, length: int) -> torch.Tensor:
    from recbole_mmm4rec.kernels import ssd_sequential

    float32_inputs = inputs(batch, length, torch.float32)  # the same values as the timed run, in float64
    return ssd_sequential(**{k: v.double() if torch.is_tensor(v) else v for k, v in float32_inputs.items()})


def table(results: list[dict], command: str, batch: int, chunk: int) -> str:
    by = {(r["length"], r["form"]): r for r in results}
    lengths = sorted({r["length"] for r in results})
    header = (
        f"`{command}` on {machine()}; batch {batch}, {HEADS} heads x {HEAD_DIM}, d_state {STATE}, "
        f"{GROUPS} groups, chunk {chunk}, float32, forward+backward."
    )
    columns = ["L", "scan ms", "quadratic ms", "scan / quadratic time", "scan peak MiB", "quadratic peak MiB",
               "quadratic / scan memory", "scan rel. error", "quadratic rel. error"]
    rows = []
    for length in lengths:
        scan, quadratic = by[(length, "scan")], by[(length, "quadratic")]
        rows.append([
            length, f"{1000 * scan['seconds']:.1f}", f"{1000 * quadratic['seconds']:.1f}",
            f"{scan['seconds'] / quadratic['seconds']:.2f}", f"{scan['peak_mib']:.0f}", f"{quadratic['peak_mib']:.0f}",
            f"{quadratic['peak_mib'] / max(scan['peak_mib'], 1):.1f}", f"{scan['relative_error']:.1e}",
            f"{quadratic['relative_error']:.1e}",
        ])
    targets = []
    if 20 in lengths:
        ratio = by[(20, "scan")]["seconds"] / by[(20, "quadratic")]["seconds"]
        targets.append(f"L=20: scan time {ratio:.2f}x the quadratic form (target <= 1.1x)")
    if 512 in lengths:
        scan, quadratic = by[(512, "scan")], by[(512, "quadratic")]
        targets.append(
            f"L=512: quadratic peak memory {quadratic['peak_mib'] / scan['peak_mib']:.1f}x the scan's (target >= 4x), "
            f"scan time {scan['seconds'] / quadratic['seconds']:.2f}x (target <= 1x)"
        )
    if 64 in lengths and 1024 in lengths:
        growth = by[(1024, "scan")]["seconds"] / by[(64, "scan")]["seconds"]
        targets.append(f"scan time from L=64 to L=1024 grows {growth:.1f}x (target <= 20x; linear is 16x)")
    if 2 * chunk in lengths and 1024 in lengths:
        growth = by[(1024, "scan")]["seconds"] / by[(2 * chunk, "scan")]["seconds"]
        targets.append(
            f"from L={2 * chunk} (two chunks) to L=1024 it grows {growth:.1f}x for {1024 // (2 * chunk)}x the length"
        )
    return "\n\n".join([header, markdown_table(columns, rows), "\n".join(f"- {t}" for t in targets)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="20,64,128,256,512,1024")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=64, help="ssd_scan's chunk_size (MMM4Rec's default)")
    parser.add_argument("--measure", nargs=3, metavar=("WHAT", "FORM", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        what, form, length = args.measure
        if what == "memory":
            print(json.dumps(measure_memory(form, args.batch, int(length), args.chunk)))
        else:
            print(json.dumps(measure_time(form, args.batch, int(length), args.chunk, args.repeats)))
        return 0

    results = []
    for length in [int(v) for v in args.lengths.split(",")]:
        for form in ("scan", "quadratic"):
            result = {"length": length, "form": form}
            for what, env in (("memory", MEMORY_TRACKING_MALLOC), ("time", {})):
                out = subprocess.run(
                    [sys.executable, __file__, "--measure", what, form, str(length), "--batch", str(args.batch),
                     "--repeats", str(args.repeats), "--chunk", str(args.chunk)],
                    capture_output=True, text=True, check=True,
                    env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env},
                )
                result.update(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(result), flush=True)
            results.append(result)
    write_results("ssd_kernel", results)
    command = "python benchmarks/ssd_kernel.py " + " ".join(sys.argv[1:])
    replace_section("ssd_kernel", "The SSD kernel: chunked scan vs the quadratic dual form", table(results, command.strip(), args.batch, args.chunk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
