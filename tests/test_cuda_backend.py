"""The CUDA kernels (mamba-ssm, causal-conv1d) against the torch ones, on a GPU.

Skipped where there is no CUDA device or the `cuda` extra is not installed (CI, CPU machines).
"""
from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from recbole_mmm4rec.kernels.backends import TORCH_KERNELS, select_kernels  # noqa: E402
from tests.test_ssd import random_inputs  # noqa: E402


@pytest.fixture(scope="module")
def cuda_kernels():
    pytest.importorskip("mamba_ssm")
    pytest.importorskip("causal_conv1d")
    kernels = select_kernels("auto", torch.device("cuda"))
    assert kernels.name == "cuda"
    return kernels


def on_cuda(inputs: dict) -> dict:
    return {k: v.float().cuda().requires_grad_(True) if torch.is_tensor(v) else v for k, v in inputs.items()}


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("length, chunk", [(20, 64), (100, 32), (256, 64)])
def test_ssd_scan_values_and_gradients(cuda_kernels, groups, length, chunk):
    inputs = random_inputs(batch=3, length=length, heads=4, head_dim=16, groups=groups, state=16, seed=1)
    inputs["D"] = torch.randn(4, dtype=torch.float64)
    upstream = torch.randn(3, length, 4, 16, device="cuda")
    results = []
    for kernels in (TORCH_KERNELS, cuda_kernels):
        leaves = on_cuda(inputs)
        y = kernels.ssd_scan(chunk_size=chunk, **leaves)
        grads = torch.autograd.grad((y * upstream).sum(), [leaves[k] for k in ("x", "dt", "B", "C", "D", "dt_bias")])
        results.append([y, *grads])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


def test_conv_and_gated_norm(cuda_kernels):
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(4, 30, 96, device="cuda", generator=g)  # channels-last, as the block passes it
    weight, bias = torch.randn(96, 4, device="cuda", generator=g), torch.randn(96, device="cuda", generator=g)
    torch.testing.assert_close(
        cuda_kernels.causal_conv1d(hidden.transpose(1, 2), weight, bias, "silu"),
        TORCH_KERNELS.causal_conv1d(hidden.transpose(1, 2), weight, bias, "silu"),
        rtol=1e-4,
        atol=1e-4,
    )
    x, z, norm_weight = torch.randn(4, 30, 64, device="cuda"), torch.randn(4, 30, 64, device="cuda"), torch.rand(64, device="cuda")
    torch.testing.assert_close(
        cuda_kernels.gated_rms_norm(x, norm_weight, z, eps=1e-5, group_size=16),
        TORCH_KERNELS.gated_rms_norm(x, norm_weight, z, eps=1e-5, group_size=16),
        rtol=1e-4,
        atol=1e-4,
    )


def test_block_forward_and_backward_match(cuda_kernels):
    from recbole_mmm4rec.blocks import TimeAwareSSD

    torch.manual_seed(0)
    reference = TimeAwareSSD(64, 2, 32, 32, 2, 4, 20, 64, kernel_backend="torch").cuda()
    fast = copy.deepcopy(reference)
    fast.kernel_backend = "cuda"
    hidden = torch.randn(8, 20, 64, device="cuda")
    mask = torch.ones(8, 20, dtype=torch.bool, device="cuda")
    mask[:3, 15:] = False  # right padding
    mask[3:5, :6] = False  # left padding
    time_channel = torch.rand(8, 20, reference.heads, device="cuda")
    outputs = []
    for block in (reference, fast):
        out, _ = block(hidden, mask, time_channel)
        out.sum().backward()
        outputs.append((out, {name: p.grad for name, p in block.named_parameters() if p.grad is not None}))
    (out_torch, grads_torch), (out_cuda, grads_cuda) = outputs
    torch.testing.assert_close(out_cuda, out_torch, rtol=5e-3, atol=5e-3)
    assert grads_cuda.keys() == grads_torch.keys()
    for name in grads_torch:
        torch.testing.assert_close(grads_cuda[name], grads_torch[name], rtol=5e-3, atol=5e-3, msg=name)
