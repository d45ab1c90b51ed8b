"""Can MMM4Rec's time channel carry its signal at all? The synthetic time-groups set, where only
the last gap of a history decides which half of the catalogue its target is in.

    .venv/bin/python benchmarks/time_signal.py [--seeds 2020,1,2,3,4] [--epochs 10]

Three variants of MMM4Rec at the test's sizes (hidden 16, 4 heads of 8; see
``recbole_mmm4rec/dataset_scripts/synthetic_time.py``), same seed each: the default time path
(``time_path_form: residual``), the paper's form (``time_path_form: paper``) and no time channel.
Each trains ``--epochs`` epochs with early stopping off and is tested at its best validation
epoch. Chance is Hit@10 = 10 / 40 = 0.25; reading the gap perfectly gives about 10 / 20 = 0.5.
Writes the table into BENCHMARKS.md and the records to benchmarks/results/time_signal.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from report import machine, markdown_table, replace_section, write_results

VARIANTS = {
    "time channel (residual form, default)": {},
    "time channel, paper form": {"time_path_form": "paper"},
    "no time channel": {"time_channel": False},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="2020,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    from recbole_mmm4rec import run_recbole
    from recbole_mmm4rec.dataset_scripts.synthetic_time import NAME, build_time_groups, time_groups_config

    seeds = [int(seed) for seed in args.seeds.split(",")]
    records = []
    with tempfile.TemporaryDirectory() as work:
        build_time_groups(os.path.join(work, NAME))
        for seed in seeds:
            for label, overrides in VARIANTS.items():
                settings = time_groups_config(
                    work, os.path.join(work, "saved"), epochs=args.epochs, seed=seed, stopping_step=args.epochs, **overrides
                )
                result = run_recbole("MMM4Rec", NAME, config_dict=settings)
                curve = [round(record["valid_score"], 3) for record in result["epoch_history"]]
                records.append({"seed": seed, "variant": label, "test_hit@10": result["test_result"]["hit@10"],
                                "valid_hit@10_per_epoch": curve})
                print(json.dumps(records[-1]), flush=True)
    write_results("time_signal", records)
    rows = []
    for label in VARIANTS:
        runs = [r for r in records if r["variant"] == label]
        hits = [r["test_hit@10"] for r in runs]
        left_chance = [next((epoch for epoch, hit in enumerate(r["valid_hit@10_per_epoch"]) if hit >= 0.375), None) for r in runs]
        rows.append([
            label,
            " / ".join(f"{hit:.3f}" for hit in hits),
            f"{sum(hits) / len(hits):.3f}",
            " / ".join("-" if epoch is None else str(epoch) for epoch in left_chance),
        ])
    command = " ".join(["python", "benchmarks/time_signal.py"] + sys.argv[1:])
    body = (
        f"`{command}` on {machine()}.\n\n"
        f"MMM4Rec on the synthetic time-groups set (500 users, 12 events each, 40 items in two groups; "
        f"hidden 16, 4 heads of 8, {args.epochs} epochs, tested at the best validation epoch). Chance: "
        f"test Hit@10 = 0.25; reading the last gap perfectly: about 0.5.\n\n"
        + markdown_table(
            ["variant", f"test Hit@10, seeds {', '.join(map(str, seeds))}", "mean",
             "first epoch with valid Hit@10 >= 0.375 (0-based; - never)"],
            rows,
        )
        + "\n\nRaw records: `benchmarks/results/time_signal.json`."
    )
    replace_section("time_signal", "Can the time channel carry its signal? A synthetic test", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
