"""Depthwise causal 1-D convolution over positions, as causal-conv1d's ``causal_conv1d_fn``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = {None: lambda t: t, "silu": F.silu}


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor:
    """Depthwise causal convolution: output t sees inputs t-k+1 .. t of its own channel only.

    Args:
        x: (b, d, l) channels first, like causal-conv1d.
        weight: (d, k).
        bias: (d) or None.
        activation: None or "silu" (the same on every code path).
    Returns:
        (b, d, l).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    channels, width = weight.shape
    if x.shape[1] != channels:
        raise ValueError(f"causal_conv1d: x has {x.shape[1]} channels, weight has {channels}")
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=channels)
    return ACTIVATIONS[activation](out)


def causal_conv1d_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor:
    """The same as :func:`causal_conv1d`, written as an explicit sum over taps (for tests)."""
    width = weight.shape[1]
    out = torch.zeros_like(x)
    for tap in range(width):
        shift = width - 1 - tap  # weight[:, -1] multiplies the current step
        shifted = F.pad(x, (shift, 0))[..., : x.shape[-1]]
        out = out + weight[:, tap].unsqueeze(-1) * shifted
    if bias is not None:
        out = out + bias.unsqueeze(-1)
    return ACTIVATIONS[activation](out)
