"""Kernel dispatch: torch on CPU without touching the CUDA packages, the CUDA set's argument mapping,
and clear errors. The CUDA numerics themselves are in test_cuda_backend.py (skipped without CUDA)."""
from __future__ import annotations

import importlib.abc
import sys
import types

import pytest
import torch

from recbole_mmm4rec.kernels import backends, causal_conv1d, gated_rms_norm, ssd_scan
from recbole_mmm4rec.kernels.backends import TORCH_KERNELS, select_kernels
from tests.test_ssd import random_inputs

CUDA_MODULES = ("mamba_ssm", "causal_conv1d")


@pytest.fixture
def fresh_cuda_lookup():
    """Forget what an earlier test found importable, before and after."""
    backends.cuda_kernels.cache_clear()
    backends._cuda_kernels_or_none.cache_clear()
    yield
    backends.cuda_kernels.cache_clear()
    backends._cuda_kernels_or_none.cache_clear()


class ImportRecorder(importlib.abc.MetaPathFinder):
    """Records every attempt to import a CUDA package (and lets the normal import go on)."""

    def __init__(self):
        self.attempts: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in CUDA_MODULES:
            self.attempts.append(name)
        return None


def test_cpu_model_never_imports_the_cuda_packages(fresh_cuda_lookup, monkeypatch):
    """auto on CPU tensors: a whole MMM4Rec block forward and backward, no import attempted."""
    from recbole_mmm4rec.blocks import TimeAwareSSD

    for name in list(sys.modules):
        if name.split(".")[0] in CUDA_MODULES:
            monkeypatch.delitem(sys.modules, name)
    recorder = ImportRecorder()
    monkeypatch.setattr(sys, "meta_path", [recorder, *sys.meta_path])
    block = TimeAwareSSD(16, 2, 8, 4, 2, 4, 10, 4, kernel_backend="auto")
    hidden = torch.randn(3, 10, 16, requires_grad=True)
    out, _ = block(hidden, torch.ones(3, 10, dtype=torch.bool), torch.zeros(3, 10, block.heads))
    out.sum().backward()
    assert select_kernels("auto", torch.device("cpu")) is TORCH_KERNELS
    assert recorder.attempts == []


def test_forcing_cuda_on_cpu_and_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="kernel_backend: cuda runs on CUDA tensors only, and the model is on cpu"):
        select_kernels("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"kernel_backend must be one of \['auto', 'torch', 'cuda'\], found 'triton'"):
        select_kernels("triton", torch.device("cpu"))
    from recbole_mmm4rec.blocks import TimeAwareSSD

    with pytest.raises(ValueError, match="kernel_backend must be one of"):
        TimeAwareSSD(16, 2, 8, 4, 2, 4, 10, 4, kernel_backend="fast")


def test_missing_cuda_packages(fresh_cuda_lookup, monkeypatch):
    """auto on a CUDA device falls back to torch; forcing cuda says what to install."""
    for name in CUDA_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    assert select_kernels("auto", torch.device("cuda")) is TORCH_KERNELS
    with pytest.raises(ImportError, match=r"mamba-ssm and causal-conv1d .*recbole-mmm4rec\[cuda\]"):
        select_kernels("cuda", torch.device("cuda"))


def install_fake_cuda_packages(monkeypatch, calls: list) -> None:
    """Stand-ins with the real packages' signatures that compute with the torch kernels."""

    def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                                  seq_idx=None, dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False):
        calls.append("mamba_chunk_scan_combined")
        return ssd_scan(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)

    def rmsnorm_fn(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
        calls.append("rmsnorm_fn")
        assert bias is None and norm_before_gate is False  # MMM4Rec gates before normalising
        return gated_rms_norm(x, weight, z, eps=eps, group_size=group_size)

    def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                         final_states_out=None, activation=None):
        calls.append("causal_conv1d_fn")
        # The checks of causal-conv1d's C++ entry point.
        assert 2 <= weight.shape[1] <= 4 and activation in (None, "silu", "swish")
        if x.stride(2) != 1:
            assert x.stride(1) == 1 and x.shape[1] % 8 == 0 and x.stride(0) % 8 == 0 and x.stride(2) % 8 == 0
        return causal_conv1d(x, weight, bias, activation)

    modules = {
        "mamba_ssm": {},
        "mamba_ssm.ops": {},
        "mamba_ssm.ops.triton": {},
        "mamba_ssm.ops.triton.ssd_combined": {"mamba_chunk_scan_combined": mamba_chunk_scan_combined},
        "mamba_ssm.ops.triton.layernorm_gated": {"rmsnorm_fn": rmsnorm_fn},
        "causal_conv1d": {"causal_conv1d_fn": causal_conv1d_fn},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)


def test_cuda_set_maps_arguments_like_the_torch_set(fresh_cuda_lookup, monkeypatch):
    """The wrappers around mamba-ssm / causal-conv1d take the torch kernels' arguments and pass
    them on as those packages expect (checked with stand-ins, since CI has no CUDA)."""
    calls: list[str] = []
    install_fake_cuda_packages(monkeypatch, calls)
    cuda = select_kernels("auto", torch.device("cuda"))
    assert cuda.name == "cuda" and select_kernels("cuda", torch.device("cuda")) is cuda

    inputs = random_inputs(length=13, groups=2)
    torch.testing.assert_close(cuda.ssd_scan(chunk_size=4, **inputs), ssd_scan(chunk_size=4, **inputs))
    x, weight, z = torch.randn(2, 5, 8), torch.randn(8), torch.randn(2, 5, 8)
    torch.testing.assert_close(
        cuda.gated_rms_norm(x, weight, z, eps=1e-5, group_size=4), gated_rms_norm(x, weight, z, eps=1e-5, group_size=4)
    )
    channels = torch.randn(2, 6, 9)
    conv_weight, conv_bias = torch.randn(6, 4), torch.randn(6)
    torch.testing.assert_close(
        cuda.causal_conv1d(channels, conv_weight, conv_bias, "silu"), causal_conv1d(channels, conv_weight, conv_bias, "silu")
    )
    assert calls == ["mamba_chunk_scan_combined", "rmsnorm_fn", "causal_conv1d_fn"]


def test_cuda_conv_layouts_and_widths(fresh_cuda_lookup, monkeypatch):
    """Channels-last inputs whose strides causal-conv1d rejects are copied to (b, d, l); a kernel
    wider than its 4 taps runs in torch."""
    calls: list[str] = []
    install_fake_cuda_packages(monkeypatch, calls)
    cuda = select_kernels("cuda", torch.device("cuda"))
    projected = torch.randn(2, 7, 388)  # a split of an in_proj output: 388 is no multiple of 8
    x = projected[..., :100].transpose(1, 2)
    weight, bias = torch.randn(100, 4), torch.randn(100)
    torch.testing.assert_close(cuda.causal_conv1d(x, weight, bias, "silu"), causal_conv1d(x, weight, bias, "silu"))
    aligned = torch.randn(2, 7, 64).transpose(1, 2)  # channels-last as the kernel reads it
    torch.testing.assert_close(cuda.causal_conv1d(aligned, weight[:64], None), causal_conv1d(aligned, weight[:64], None))
    assert calls == ["causal_conv1d_fn", "causal_conv1d_fn"]
    wide = torch.randn(64, 6)
    torch.testing.assert_close(cuda.causal_conv1d(aligned, wide, None), causal_conv1d(aligned, wide, None))
    assert len(calls) == 2


def test_block_on_the_cuda_set_matches_the_torch_set(fresh_cuda_lookup, monkeypatch):
    """A whole TimeAwareSSD (self and cross) through the CUDA set's wrappers, with the stand-ins'
    layout checks, gives the torch block's outputs and gradients."""
    from recbole_mmm4rec.blocks import ssd_block

    calls: list[str] = []
    install_fake_cuda_packages(monkeypatch, calls)
    cuda = select_kernels("cuda", torch.device("cuda"))
    for cross in (False, True):
        torch.manual_seed(0)
        block = ssd_block.TimeAwareSSD(64, 2, 32, 32, 2, 4, 12, 8, cross=cross)
        hidden, condition = torch.randn(3, 12, 64), torch.randn(3, 12, 64)
        mask = torch.ones(3, 12, dtype=torch.bool)
        mask[0, 9:] = False
        mask[1, :4] = False
        time_channel = torch.rand(3, 12, block.heads)
        results = []
        for kernels in (TORCH_KERNELS, cuda):
            monkeypatch.setattr(ssd_block, "select_kernels", lambda backend, device, k=kernels: k)
            block.zero_grad(set_to_none=True)
            out, _ = block(hidden, mask, time_channel, condition if cross else None)
            (out * torch.linspace(-1, 1, 64)).sum().backward()
            grads = {name: p.grad.clone() for name, p in block.named_parameters() if p.grad is not None}
            results.append((out, grads))
        (out_torch, grads_torch), (out_cuda, grads_cuda) = results
        torch.testing.assert_close(out_cuda, out_torch)
        assert grads_cuda.keys() == grads_torch.keys() and "conv_weight" in grads_torch
        for name in grads_torch:
            torch.testing.assert_close(grads_cuda[name], grads_torch[name], msg=name)
    assert {"mamba_chunk_scan_combined", "rmsnorm_fn", "causal_conv1d_fn"} <= set(calls)
