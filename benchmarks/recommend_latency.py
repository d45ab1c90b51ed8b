"""Latency of run_recommend's scoring: ms per user at top-10, batches of 1 and of 1,024 histories.

    .venv/bin/python benchmarks/recommend_latency.py [--threads 1] [--new_items 100000]

MMM4Rec (properties/quick_start/demo.yaml: hidden 64, 1 layer, text + kg, with ID, histories of
20) and SASRec (the same file) on ml-100k-mm, through :class:`recbole_mmm4rec.recommend.Recommender`
end to end (histories of the dataset's users, exclusion of their items, top-k, tokens out); then
MMM4Rec again with ``--new_items`` synthetic items (random features of the dataset's 384-d text
and 64-d kg sizes) added to the catalogue. Latency does not depend on the weights' values: each
checkpoint holds the models' initial weights (nothing is trained). Batch 1: one call per user, over
--users_b1 users; batch 1,024: one call of 1,024 histories (the 943 users, cycled), repeated
--repeats times; medians. Writes its table into BENCHMARKS.md and the raw results to
benchmarks/results/recommend_latency.json.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from report import ROOT, machine, markdown_table, replace_section, write_results

DEMO = os.path.join(ROOT, "properties", "quick_start", "demo.yaml")
TOP_K = 10
LARGE_BATCH = 1024


def untrained_checkpoint(model_name: str, folder: str) -> str:
    """A RecBole checkpoint of ``model_name`` at the demo sizes on ml-100k-mm, with its initial weights."""
    from recbole.data import data_preparation

    from recbole_mmm4rec.config import PluginConfig
    from recbole_mmm4rec.quick_start import build_model_and_trainer, create_dataset

    config = PluginConfig(
        model=model_name, dataset="ml-100k-mm", config_file_list=[DEMO],
        config_dict={"checkpoint_dir": folder, "show_progress": False},
    )
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model, _ = build_model_and_trainer(config, train_data)
    path = os.path.join(folder, f"{model_name}.pth")
    torch.save({"config": config, "state_dict": model.state_dict(), "other_parameter": model.other_parameter()}, path)
    return path


def synthetic_items(folder: str, count: int, dims: dict[str, int]) -> str:
    """``count`` new items with random features per modality, in the package's feature format."""
    from recbole_mmm4rec.data import write_item_features

    rng = np.random.default_rng(0)
    tokens = [f"synthetic-{index}" for index in range(count)]
    for modality, dim in dims.items():
        write_item_features(os.path.join(folder, f"synthetic.{modality}.npy"), tokens, rng.normal(size=(count, dim)).astype(np.float32))
    return folder


def time_recommender(recommender, users_b1: int, repeats: int) -> dict:
    users = recommender.users()
    large = [users[index % len(users)] for index in range(LARGE_BATCH)]
    started = time.perf_counter()
    recommender.recommend_users(users[:1], k=TOP_K, batch_size=1)  # encodes the catalogue once
    first_call = time.perf_counter() - started
    single = []
    for user in users[:users_b1]:
        started = time.perf_counter()
        recommender.recommend_users([user], k=TOP_K, batch_size=1)
        single.append(time.perf_counter() - started)
    batched = []
    for _ in range(repeats):
        started = time.perf_counter()
        recommender.recommend_users(large, k=TOP_K, batch_size=LARGE_BATCH)
        batched.append(time.perf_counter() - started)
    return {
        "catalogue": len(recommender.item_tokens) - 1,
        "first_call_s": first_call,
        "ms_per_user_batch_1": 1000 * statistics.median(single),
        "ms_per_user_batch_1024": 1000 * statistics.median(batched) / LARGE_BATCH,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--new_items", type=int, default=100_000, help="synthetic new items for the large catalogue")
    parser.add_argument("--users_b1", type=int, default=200, help="users timed one by one")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of 1,024 histories")
    parser.add_argument("--note", type=str, default="", help="what else ran on the machine, quoted under the table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the dataset folder and RecBole's log/ are relative to the repository
    from recbole_mmm4rec.recommend import Recommender, feature_tables

    rows, results = [], []
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = {name: untrained_checkpoint(name, folder) for name in ("MMM4Rec", "SASRec")}
        dims = None
        for model_name, with_new_items in (("MMM4Rec", False), ("SASRec", False), ("MMM4Rec", True)):
            new_items = synthetic_items(tempfile.mkdtemp(dir=folder), args.new_items, dims) if with_new_items else None
            started = time.perf_counter()
            recommender = Recommender.from_checkpoint(checkpoints[model_name], new_items=new_items)
            load = time.perf_counter() - started
            if model_name == "MMM4Rec" and dims is None:
                dims = {modality: table.dim for modality, table in feature_tables(recommender.model).items()}
            result = {"model": model_name, "load_s": load, **time_recommender(recommender, args.users_b1, args.repeats)}
            del recommender  # a large catalogue's tables and scores are not kept beside the next one
            results.append(result)
            print(result, file=sys.stderr)
            rows.append([
                model_name, f"{result['catalogue']:,}" + (f" ({args.new_items:,} new)" if with_new_items else ""),
                f"{result['ms_per_user_batch_1']:.2f}", f"{result['ms_per_user_batch_1024']:.3f}",
                f"{result['first_call_s']:.2f}", f"{load:.1f}",
            ])
    table = markdown_table(
        ["model", "candidate items", "ms/user, batch 1", "ms/user, batch 1,024", "first call s", "load s"], rows
    )
    command = "python benchmarks/recommend_latency.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    body = (
        f"`{command.strip()}` on {machine()}, torch threads: {args.threads}.\n\n"
        f"{table}\n\n"
        f"Top-{TOP_K} through `Recommender.recommend_users` end to end (the user's history, exclusion of "
        f"their items, top-k, tokens out), the dataset's users at the demo sizes (demo.yaml, histories of 20); "
        f"medians over {args.users_b1} single-user calls and {args.repeats} calls of {LARGE_BATCH:,} histories. "
        "New items: random features of the dataset's sizes (384-d text, 64-d kg), scored with a zero ID vector "
        "(demo MMM4Rec is with ID). The first call encodes the catalogue's candidate vectors, which later "
        "calls reuse; load: the checkpoint, its dataset and the new items' files. Initial weights: latency "
        "does not depend on their values." + (f" {args.note}" if args.note else "")
    )
    replace_section("recommend_latency", "Recommend latency", body)
    write_results("recommend_latency", {"command": command.strip(), "machine": machine(), "threads": args.threads, "results": results})
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
