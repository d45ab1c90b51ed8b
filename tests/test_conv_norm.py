"""Depthwise causal conv and gated RMSNorm against their references and definitions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbole_mmm4rec.kernels import causal_conv1d, causal_conv1d_reference, gated_rms_norm
from recbole_mmm4rec.kernels.conv import MATMUL_MAX_LENGTH, SHIFTED_MAX_WIDTH


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("width", [4, 20])
def test_causal_conv_matches_reference_and_is_causal(activation, with_bias, width):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 11, generator=g, dtype=torch.float64)
    weight = torch.randn(6, width, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64) if with_bias else None
    y = causal_conv1d(x, weight, bias, activation)
    torch.testing.assert_close(y, causal_conv1d_reference(x, weight, bias, activation))
    later = x.clone()
    later[..., 7:] += 3.0
    torch.testing.assert_close(causal_conv1d(later, weight, bias, activation)[..., :7], y[..., :7])
    channel = x.clone()
    channel[:, 2] += 3.0
    changed = causal_conv1d(channel, weight, bias, activation)
    torch.testing.assert_close(changed[:, [0, 1, 3, 4, 5]], y[:, [0, 1, 3, 4, 5]])  # depthwise


@pytest.mark.parametrize(
    "width, length, channels_last",
    [
        (4, 20, False),  # shifted multiply-adds
        (4, 20, True),  # the same on a transposed (b, l, d) tensor, as the SSD block passes it
        (SHIFTED_MAX_WIDTH, 3, True),  # fewer positions than taps
        (SHIFTED_MAX_WIDTH + 1, MATMUL_MAX_LENGTH, False),  # banded matmul
        (SHIFTED_MAX_WIDTH + 1, MATMUL_MAX_LENGTH + 1, False),  # conv1d
    ],
)
def test_causal_conv_every_path_matches_reference_with_gradients(width, length, channels_last):
    g = torch.Generator().manual_seed(1)
    shape = (2, length, 5) if channels_last else (2, 5, length)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, width, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 5, length, generator=g, dtype=torch.float64)
    channels_first = x.transpose(1, 2) if channels_last else x
    out = causal_conv1d(channels_first, weight, bias, "silu")
    expected_out = causal_conv1d_reference(channels_first, weight, bias, "silu")
    torch.testing.assert_close(out, expected_out)
    grads = torch.autograd.grad((out * upstream).sum(), (x, weight, bias))
    expected = torch.autograd.grad((expected_out * upstream).sum(), (x, weight, bias))
    for name, grad, reference in zip(("x", "weight", "bias"), grads, expected):
        torch.testing.assert_close(grad, reference, msg=name)


def test_causal_conv_gradients_without_bias_and_frozen_weight():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, generator=g, dtype=torch.float64)
    torch.autograd.gradcheck(lambda t: causal_conv1d(t, weight), (x,))
    weight.requires_grad_(True)
    torch.autograd.gradcheck(lambda t, w: causal_conv1d(t, w, activation="silu"), (x, weight))


def test_causal_conv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="activation must be one of"):
        causal_conv1d(torch.zeros(1, 2, 3), torch.zeros(2, 4), activation="hardswish")
    with pytest.raises(ValueError, match="x has 3 channels, weight has 2"):
        causal_conv1d(torch.zeros(1, 3, 3), torch.zeros(2, 4))


def test_gated_rms_norm_definition():
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    weight = torch.randn(8, generator=g)
    gated = x * F.silu(z)
    expected = gated / torch.sqrt(gated.pow(2).mean(-1, keepdim=True) + 1e-6) * weight
    torch.testing.assert_close(gated_rms_norm(x, weight, z), expected)
    halves = torch.cat([gated_rms_norm(x[..., :4], weight[:4], z[..., :4]), gated_rms_norm(x[..., 4:], weight[4:], z[..., 4:])], -1)
    torch.testing.assert_close(gated_rms_norm(x, weight, z, group_size=4), halves)
    torch.testing.assert_close(gated_rms_norm(x, weight), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight)
    with pytest.raises(ValueError, match="group_size 3 must divide the last dimension 8"):
        gated_rms_norm(x, weight, z, group_size=3)
