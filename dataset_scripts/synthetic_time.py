"""A synthetic dataset in which only the time gaps decide the next item.

Items fall into two groups, which their features show (as items of one category look alike):
each modality's features are random plus a shared direction, with the sign of the item's group.
Each user's events are spaced by gaps drawn at random, short (an hour) or long (a month); the
item after a short gap's event comes from the first group, after a long gap's event from the
second, uniformly within the group. So the group of a history's target is decided by the
history's last gap alone: the items of the history and their order carry nothing about it. A
model that reads the gaps can halve its candidates (test Hit@10 about 10 / group size); one that
cannot stays at about 10 / items.
"""
from __future__ import annotations

import os

import numpy as np

from recbole_mmm4rec.data.features import write_item_features

NAME = "time-groups"
ITEMS_PER_GROUP = 20
SHORT_GAP, LONG_GAP = 3600, 30 * 86400


def build_time_groups(folder: str, users: int = 500, events: int = 12, feature_dim: int = 64, seed: int = 0) -> None:
    """Write ``NAME``'s atomic file and two random feature modalities (text, kg) into ``folder``."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    items = [f"i{index}" for index in range(2 * ITEMS_PER_GROUP)]
    rows = []
    for user in range(users):
        gaps = rng.integers(2, size=events)  # gaps[k]: 1 if event k came a long gap after event k-1
        times = 1_000_000_000 + int(rng.integers(0, 86400)) + np.cumsum(np.where(gaps, LONG_GAP, SHORT_GAP))
        for k in range(events):
            # The gap that ended at the previous event decides the group (the first two: random).
            group = int(gaps[k - 1]) if k >= 2 else int(rng.integers(2))
            item = items[group * ITEMS_PER_GROUP + int(rng.integers(ITEMS_PER_GROUP))]
            rows.append(f"u{user}\t{item}\t{times[k]}")
    with open(os.path.join(folder, f"{NAME}.inter"), "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(rows) + "\n")
    group_sign = np.repeat([-1.0, 1.0], ITEMS_PER_GROUP)[:, None]
    for modality in ("text", "kg"):
        direction = rng.standard_normal(feature_dim)
        features = rng.standard_normal((len(items), feature_dim)) + group_sign * direction
        features = features.astype(np.float32)
        write_item_features(os.path.join(folder, f"{NAME}.{modality}.npy"), items, features)


def time_groups_config(data_path: str, checkpoint_dir: str, **overrides) -> dict:
    """A CPU-sized MMM4Rec config for the synthetic set: leave-one-out by time, full ranking."""
    config = {
        "data_path": data_path,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "modalities": ["text", "kg"],
        "MAX_ITEM_LIST_LENGTH": 8,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "train_batch_size": 64,
        "eval_batch_size": 4096,
        "learning_rate": 5e-3,
        "show_progress": False,
        "use_gpu": False,
        "checkpoint_dir": str(checkpoint_dir),
        "metrics": ["Hit"],
        "topk": [10],
        "valid_metric": "Hit@10",
        "use_item_id": False,
        "hidden_size": 16,
        "inner_size": 32,
        "head_dim": 8,
        "d_state": 8,
        "n_groups": 2,
        "dropout_prob": 0.1,
        "train_mode": "prefix",  # the mode its thresholds and benchmarks/time_signal.py's figures were measured in
    }
    config.update(overrides)
    return config
