"""Depthwise causal 1-D convolution over positions, as causal-conv1d's ``causal_conv1d_fn``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = {None: lambda t: t, "silu": F.silu, "swish": F.silu}  # causal-conv1d's names

# Kernels up to this many taps (Mamba-2's are 4) run as shifted multiply-adds in whatever memory
# layout x has: linear in length and taps, and no transposed copy of a channels-last input.
SHIFTED_MAX_WIDTH = 8
# Wider kernels (the time path's, with one tap per position) run up to this length as a batched
# matmul with a banded (l, l) matrix per channel, 2.5-3x faster than the CPU depthwise conv1d at
# l=20; longer sequences use conv1d, whose cost is linear in l.
MATMUL_MAX_LENGTH = 64


class _ShiftedCausalConv(torch.autograd.Function):
    """out[b, t, c] = bias[c] + sum_s weight[c, k-1-s] * x[b, t-s, c] on a (b, l, c) view.

    Each tap is one fused multiply-add over a shifted slice; the backward is the same with the
    shifts reversed, plus one multiply-reduce per tap for the weight gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        width, length = weight.shape[1], x.shape[1]
        out = x * weight[:, -1] if bias is None else torch.addcmul(bias, x, weight[:, -1])
        for shift in range(1, min(width, length)):
            out[:, shift:].addcmul_(x[:, :-shift], weight[:, -1 - shift])
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        width, length = weight.shape[1], x.shape[1]
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * weight[:, -1]
            for shift in range(1, min(width, length)):
                grad_x[:, :-shift].addcmul_(grad[:, shift:], weight[:, -1 - shift])
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight)
            for shift in range(min(width, length)):
                grad_weight[:, -1 - shift] = (grad[:, shift:] * x[:, : length - shift]).sum((0, 1))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 1))
        return grad_x, grad_weight, grad_bias


def _banded(weight: torch.Tensor, length: int) -> torch.Tensor:
    """(d, k) taps -> (d, l, l) matrix M with M[c, t, s] = weight[c, k-1-(t-s)] for 0 <= t-s < k."""
    width = weight.shape[1]
    positions = torch.arange(length, device=weight.device)
    lag = positions.unsqueeze(1) - positions.unsqueeze(0)  # t - s
    in_band = (lag >= 0) & (lag < width)
    return weight[:, (width - 1 - lag).clamp(0, width - 1)] * in_band


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor:
    """Depthwise causal convolution: output t sees inputs t-k+1 .. t of its own channel only.

    Args:
        x: (b, d, l) channels first, like causal-conv1d; a transposed channels-last tensor
            (``h.transpose(1, 2)`` of a (b, l, d) one) is not copied by the narrow-kernel path.
        weight: (d, k); ``weight[:, -1]`` multiplies the current step.
        bias: (d) or None.
        activation: None or "silu" (alias "swish"), the same on every code path.
    Returns:
        (b, d, l).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    channels, width = weight.shape
    if x.shape[1] != channels:
        raise ValueError(f"causal_conv1d: x has {x.shape[1]} channels, weight has {channels}")
    length = x.shape[-1]
    if width <= SHIFTED_MAX_WIDTH:
        out = _ShiftedCausalConv.apply(x.transpose(1, 2), weight, bias).transpose(1, 2)
    elif length <= MATMUL_MAX_LENGTH:
        out = torch.einsum("bcs,cts->bct", x, _banded(weight, length))
        if bias is not None:
            out = out + bias.unsqueeze(-1)
    else:
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
