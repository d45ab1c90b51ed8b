"""Gated RMSNorm, as mamba-ssm's ``RMSNormGated`` with ``norm_before_gate=False``, on any device."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gated_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    z: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
) -> torch.Tensor:
    """``rms_norm(x * silu(z)) * weight``, normalised over groups of ``group_size`` channels.

    Args:
        x: (..., d). z: (..., d) gate or None. weight: (d).
        group_size: channels per normalisation group (d by default); must divide d.
    Returns:
        (..., d), in x's dtype; the statistics are computed in float32.
    """
    dim = x.shape[-1]
    group_size = group_size or dim
    if dim % group_size:
        raise ValueError(f"gated_rms_norm: group_size {group_size} must divide the last dimension {dim}")
    gated = x.float() if z is None else x.float() * F.silu(z.float())
    grouped = gated.reshape(*x.shape[:-1], dim // group_size, group_size)
    normed = grouped * torch.rsqrt(grouped.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (normed.reshape(x.shape) * weight.float()).to(x.dtype)
