"""A real run_hyper search: MMM4Rec on ml-100k-mm, its results table and wall time in BENCHMARKS.md.

    .venv/bin/python benchmarks/hyper_search.py [--num_samples 8] [--epochs 3] [--max_concurrent 2]
    .venv/bin/python benchmarks/hyper_search.py --render     # the section again, from the saved results

Runs the ``run_hyper`` command printed in the section (local Ray, ASHA, MMM4Rec.hyper over
properties/quick_start/demo.yaml sizes) from the repository root and times it end to end (Ray
start-up and the dataset build on first use included). Its results.csv and wall time go to
benchmarks/results/hyper_search.json, and from there into the section.
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import subprocess
import sys
import time

import yaml

from report import HERE, ROOT, machine, markdown_table, replace_section, write_results

RESULTS = os.path.join(HERE, "results", "hyper_search.json")


def cell(value: str) -> str:
    """Numbers to 4 decimals (3 significant digits below 0.01), the rest as written."""
    try:
        number = float(value)
    except ValueError:
        return value or "-"
    if "." not in value and "e" not in value:
        return value
    return f"{number:.3g}" if 0 < abs(number) < 1e-2 else f"{number:.4f}"


def run(num_samples: int, epochs: int, max_concurrent: int) -> None:
    name = f"MMM4Rec-ml-100k-mm-{time.strftime('%Y%m%d-%H%M%S')}"
    command = [
        "run_hyper", "--model=MMM4Rec", "--dataset=ml-100k-mm", "--params_file=properties/hyper/MMM4Rec.hyper",
        "--config_files=properties/quick_start/demo.yaml", f"--num_samples={num_samples}",
        f"--epochs={epochs}", "--cpus_per_trial=1", f"--max_concurrent={max_concurrent}",
        "--storage_path=ray_results", f"--name={name}",
    ]
    started = time.perf_counter()
    subprocess.run([os.path.join(os.path.dirname(sys.executable), command[0]), *command[1:]], cwd=ROOT, check=True)
    wall_seconds = time.perf_counter() - started
    with open(os.path.join(ROOT, "ray_results", name, "results.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    write_results("hyper_search", {
        "command": " ".join(command),
        "wall_seconds": round(wall_seconds, 1),
        # other jobs share the machine: how busy it was over the run's last 15 minutes
        "load_average_15min": round(os.getloadavg()[2], 1),
        "rows": rows,
    })


def render() -> None:
    with open(RESULTS, encoding="utf-8") as f:
        results = json.load(f)
    flags = dict(arg[2:].split("=", 1) for arg in results["command"].split()[1:])
    rows = results["rows"]
    with open(os.path.join(ROOT, flags["storage_path"], flags["name"], "best.yaml"), encoding="utf-8") as f:
        best_config = yaml.safe_load(f)
    columns = list(rows[0])
    searched = [c for c in columns if c not in ("trial", "status", "evaluations", "error")
                and not c.startswith(("best valid", "test "))]
    statuses = collections.Counter(row["status"] for row in rows)
    evaluations = sum(int(row["evaluations"]) for row in rows)
    body = (
        f"`python benchmarks/hyper_search.py` on {machine()}, shared with other jobs (15-minute load "
        f"average {results['load_average_15min']} at the end): one torch thread per trial, "
        f"{flags['max_concurrent']} trials at a time. **{results['wall_seconds'] / 60:.1f} min** wall time for:\n\n"
        f"```bash\n{results['command']}\n```\n\n"
        + markdown_table(columns, [[cell(row[c]) for c in columns] for row in rows])
        + f"\n\n{', '.join(f'{n} {status}' for status, n in statuses.items())}; {evaluations} epochs "
        f"trained in all, against {len(rows) * int(flags['epochs'])} without ASHA. Best (first row): "
        + ", ".join(f"{key} {cell(str(best_config[key]))}" for key in searched)
        + ". Test metrics are each trial's own: RecBole's test evaluation of its best-validation "
        f"checkpoint, in the trial. A short search ({flags['epochs']} epochs, far from convergence) on "
        "a CPU: it shows the tool at work, not tuned values."
        + (f"\n\n{results['note']}" if results.get("note") else "")
    )
    replace_section("hyper_search", "Hyper-parameter search: MMM4Rec on ml-100k-mm", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max_concurrent", type=int, default=2)
    parser.add_argument("--render", action="store_true", help="only rewrite the section from the saved results")
    args = parser.parse_args()
    if not args.render:
        run(args.num_samples, args.epochs, args.max_concurrent)
    render()


if __name__ == "__main__":
    main()
