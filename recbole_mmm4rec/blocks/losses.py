"""In-batch contrastive cross-entropy with repeated targets masked out."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def in_batch_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of row i against column i of the (b, b) ``logits``.

    Column j scores row j's positive (its target item, or another view of its sequence); the
    other columns are row i's negatives, except those of rows with the same target as row i:
    a copy of the row's own target would otherwise be pushed away from it.

    Args:
        logits: (b, b) scores of every row against every row's positive.
        targets: (b,) the rows' target item ids.
    """
    same_target = targets.unsqueeze(0) == targets.unsqueeze(1)
    own = torch.eye(len(targets), dtype=torch.bool, device=targets.device)
    logits = logits.masked_fill(same_target & ~own, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(targets), device=targets.device))


def in_batch_item_cross_entropy(
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], users: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """:func:`in_batch_cross_entropy` of ``users`` against the batch's target items, over the
    distinct targets: (n, distinct) logits instead of (n, n).

    Every copy of an item scores the same, so a softmax over the n targets with copies of the
    row's own target masked equals one over the distinct items where each other item's logit
    gains log(its count) and the row's own target counts once. A sequence-mode batch has a
    target at every position, many more than a catalogue's distinct items in a batch.

    Args:
        score: ``score(users, items)``, (n, d) x (u,) item ids -> (n, u) logits.
        users: (n, d) user vectors, one per target.
        targets: (n,) their target item ids.
    """
    items, positive, counts = torch.unique(targets, return_inverse=True, return_counts=True)
    log_counts = counts.to(users.dtype).log()
    logits = score(users, items) + log_counts
    own = F.one_hot(positive, len(items)).bool()
    logits = torch.where(own, logits - log_counts[positive].unsqueeze(1), logits)
    return F.cross_entropy(logits, positive)
