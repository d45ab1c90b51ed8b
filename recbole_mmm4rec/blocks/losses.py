"""In-batch contrastive cross-entropy with repeated targets masked out."""
from __future__ import annotations

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
