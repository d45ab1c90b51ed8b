"""Sequence-mode training data: each user's training interactions as windows, a target at every position.

RecBole trains sequential models on one row per prefix: a user with n training targets gives n
rows, each re-encoding up to L = ``MAX_ITEM_LIST_LENGTH`` items to predict one. A causal model's
output at position t of a window already is the prediction from the window's first t + 1 items,
so one pass over a window trains on all of its targets (``train_mode: sequence``).

The window rule (:func:`training_windows`). Windows hold at most L items, as RecBole's rows do:
positional models are defined on L positions (UniSRec's position table, MMM4Rec's L-tap time
gate and L-position Fourier window). A user's first window starts where the prefix row of the
user's first training target starts, and every one of its positions is a loss position: those
targets see exactly their prefix rows' histories. Each later window moves ``L - overlap`` items
on; its first ``overlap`` positions are context only and its last ``L - overlap`` positions are
the next targets, each of which sees at least ``overlap + 1`` items (its prefix row: L). Every
training target is a loss position in exactly one window. ``overlap`` is ``window_overlap``
(default ``L // 2``); 0 gives SASRec's original non-overlapping windows, ``L - 1`` one window per
target after the first window (prefix mode's histories, at prefix mode's cost).
"""
from __future__ import annotations

import numpy as np
import torch
from recbole.data.dataloader import TrainDataLoader
from recbole.data.interaction import Interaction

# The next item at every window position; 0 (never an item) where a position is no target.
NEXT_ITEMS_SUFFIX = "_next"
TRAIN_MODES = ("prefix", "sequence")


def next_items_field(config) -> str:
    """The name of a sequence batch's (b, L) next-item field, e.g. ``item_id_next_list``."""
    return config["ITEM_ID_FIELD"] + NEXT_ITEMS_SUFFIX + config["LIST_SUFFIX"]


def train_mode(config) -> str:
    """The config's ``train_mode`` (``prefix`` when absent: a config saved before the key)."""
    mode = config["train_mode"] or "prefix"
    if mode not in TRAIN_MODES:
        raise ValueError(f"train_mode must be one of {list(TRAIN_MODES)}, found {mode!r}")
    return mode


def window_overlap(config) -> int:
    """The config's ``window_overlap`` (None: half of ``MAX_ITEM_LIST_LENGTH``), checked."""
    length = config["MAX_ITEM_LIST_LENGTH"]
    overlap = config["window_overlap"]
    if overlap is None:
        return length // 2
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < length:
        raise ValueError(
            f"window_overlap must be an integer from 0 to MAX_ITEM_LIST_LENGTH - 1 = {length - 1} "
            f"(context-only positions per window), found {overlap!r}"
        )
    return overlap


def windows_per_batch(batch_targets: int, windows: int, targets: int) -> int:
    """Windows per training batch for ``train_batch_size`` = ``batch_targets``: in sequence mode the
    batch size counts targets, as in prefix mode (a prefix row is one target), so that an epoch
    makes as many optimiser steps and an in-batch loss sees as many candidates; the batch takes
    the windows that hold that many targets on average."""
    if windows == 0:
        return batch_targets
    return max(1, round(batch_targets * windows / targets))


class WindowTrainDataLoader(TrainDataLoader):
    """RecBole's training loader over a split of windows, with ``train_batch_size`` counting
    targets: each batch takes :func:`windows_per_batch` windows (also after ``update_config``)."""

    def _init_batch_size_and_step(self):
        super()._init_batch_size_and_step()
        self.step = windows_per_batch(self.step, len(self._dataset), len(self._dataset.inter_feat))
        self.set_batch_size(self.step)


def training_windows(
    target_rows: np.ndarray, user_first_rows: np.ndarray, length: int, overlap: int
) -> dict[str, np.ndarray]:
    """The windows of every user's training targets (see the module docstring).

    Args:
        target_rows: (n,) sorted rows of the training targets in the table of interactions
            sorted by user then time; each user's targets are consecutive rows.
        user_first_rows: (n,) the row of each target's user's first interaction.
        length: L, the most items a window (and a prefix row) holds.
        overlap: context-only positions at the start of every window but a user's first.

    Returns:
        ``start`` (w,) the row of each window's first input item, ``length`` (w,) its number of
        input items (its last target is the row after its last input), ``first_target`` (w,) its
        first loss position. Windows are ordered by user, then time.
    """
    target_rows = np.asarray(target_rows, dtype=np.int64)
    user_first_rows = np.asarray(user_first_rows, dtype=np.int64)
    if len(target_rows) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return {"start": empty, "length": empty.copy(), "first_target": empty.copy()}
    new_user = np.r_[True, user_first_rows[1:] != user_first_rows[:-1]]
    gaps = np.diff(target_rows)[~new_user[1:]]
    if np.any(gaps != 1):
        raise ValueError("training_windows: each user's training targets must be consecutive interactions")
    firsts = np.flatnonzero(new_user)
    lasts = np.r_[firsts[1:], len(target_rows)] - 1
    first_target, last_target = target_rows[firsts], target_rows[lasts]
    # The first window starts where the first target's prefix row does.
    context_start = np.maximum(user_first_rows[firsts], first_target - length)
    stride = length - overlap
    later = np.maximum(0, last_target - (context_start + length))
    counts = 1 + -(-later // stride)
    user = np.repeat(np.arange(len(firsts)), counts)
    index = np.arange(len(user)) - np.repeat(np.cumsum(counts) - counts, counts)  # window m of its user
    start = context_start[user] + index * stride
    window_first_target = np.where(index == 0, first_target[user], start + overlap + 1)
    return {
        "start": start,
        "length": np.minimum(length, last_target[user] - start),
        "first_target": window_first_target - 1 - start,
    }


def padded_lists(sequences: Interaction, first_rows: torch.Tensor, lengths: torch.Tensor,
                 uid_field: str, list_suffix: str, max_length: int) -> dict[str, torch.Tensor]:
    """RecBole's list fields: for every field of ``sequences`` but the user's, (n, L) right-padded
    ``<field><list_suffix>`` of the ``lengths`` interactions from each of ``first_rows`` (padding 0)."""
    positions = torch.arange(max_length)
    real = positions < lengths.unsqueeze(1)
    rows = torch.where(real, first_rows.unsqueeze(1) + positions, 0)
    lists = {}
    for field in sequences.interaction:
        if field == uid_field:
            continue
        values = sequences[field][rows]
        mask = real.view(real.shape + (1,) * (values.dim() - 2))
        lists[field + list_suffix] = values * mask.to(values.dtype)
    return lists


def window_batch(sequences: Interaction, windows: dict[str, np.ndarray], index: np.ndarray, uid_field: str,
                 iid_field: str, list_suffix: str, length_field: str, max_length: int) -> Interaction:
    """The windows ``index`` as a batch: the user, ``length_field`` (b,), the inputs as
    :func:`padded_lists`, and ``<iid_field>_next<list_suffix>`` (b, L): the next item at every
    loss position, 0 elsewhere."""
    start = torch.from_numpy(windows["start"][index])
    lengths = torch.from_numpy(windows["length"][index])
    first_target = torch.from_numpy(windows["first_target"][index])
    positions = torch.arange(max_length)
    is_target = (positions < lengths.unsqueeze(1)) & (positions >= first_target.unsqueeze(1))
    next_rows = torch.where(is_target, start.unsqueeze(1) + positions + 1, 0)
    return Interaction({
        uid_field: sequences[uid_field][start],
        length_field: lengths,
        **padded_lists(sequences, start, lengths, uid_field, list_suffix, max_length),
        iid_field + NEXT_ITEMS_SUFFIX + list_suffix: sequences[iid_field][next_rows] * is_target,
    })
