"""ssd_scan against the step-by-step recurrence and the quadratic dual form (float64)."""
from __future__ import annotations

import pytest
import torch

from recbole_mmm4rec.kernels import segment_sum, ssd_quadratic, ssd_scan, ssd_sequential


def random_inputs(batch=2, length=37, heads=4, head_dim=8, groups=2, state=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return dict(
        x=randn(batch, length, heads, head_dim),
        dt=randn(batch, length, heads),
        A=-torch.rand(heads, generator=g, dtype=dtype) * 2 - 0.1,
        B=randn(batch, length, groups, state),
        C=randn(batch, length, groups, state),
        dt_bias=randn(heads) * 0.1,
        dt_softplus=True,
    )


@pytest.mark.parametrize("groups", [1, 2, 4])  # g < h and g == h
@pytest.mark.parametrize("length, chunk", [(37, 8), (32, 8), (5, 16), (1, 4), (64, 64)])
@pytest.mark.parametrize("with_d_z", [False, True])
def test_chunked_equals_recurrence_and_dual_form(groups, length, chunk, with_d_z):
    inputs = random_inputs(length=length, groups=groups)
    if with_d_z:
        inputs["D"] = torch.randn(4, 8, dtype=torch.float64)
        inputs["z"] = torch.randn(2, length, 4, 8, dtype=torch.float64)
    reference = ssd_sequential(**inputs)
    torch.testing.assert_close(ssd_scan(chunk_size=chunk, **inputs), reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ssd_quadratic(**inputs), reference, rtol=1e-10, atol=1e-10)


def test_gradients_match_the_recurrence():
    inputs = random_inputs(length=19, groups=2)
    inputs["D"] = torch.randn(4, dtype=torch.float64)
    inputs["z"] = torch.randn(2, 19, 4, 8, dtype=torch.float64)
    names = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias"]
    grads = []
    for run in (lambda i: ssd_scan(chunk_size=6, **i), lambda i: ssd_sequential(**i)):
        leaves = {k: v.clone().requires_grad_(True) if k in names else v for k, v in inputs.items()}
        (run(leaves) * torch.linspace(-1, 1, 8, dtype=torch.float64)).sum().backward()
        grads.append([leaves[k].grad for k in names])
    for name, got, want in zip(names, *grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)


def test_float32_long_sequence_is_stable():
    inputs = random_inputs(batch=1, length=1024, heads=2, head_dim=4, groups=1, state=4, seed=3)
    reference = ssd_sequential(**inputs)  # float64
    inputs32 = {k: v.float() if torch.is_tensor(v) else v for k, v in inputs.items()}
    fast = ssd_scan(chunk_size=64, **inputs32)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast.double(), reference, rtol=1e-4, atol=1e-4)


def test_causality_and_chunk_independence():
    inputs = random_inputs(length=30)
    y = ssd_scan(chunk_size=7, **inputs)
    changed = dict(inputs, x=inputs["x"].clone())
    changed["x"][:, 20:] += 5.0
    y_changed = ssd_scan(chunk_size=7, **changed)
    torch.testing.assert_close(y_changed[:, :20], y[:, :20], rtol=0, atol=1e-12)
    assert not torch.allclose(y_changed[:, 20:], y[:, 20:])
    torch.testing.assert_close(ssd_scan(chunk_size=30, **inputs), y, rtol=1e-10, atol=1e-10)


def test_segment_sum():
    a = torch.tensor([1.0, 2.0, 3.0])
    s = segment_sum(a)
    assert s[2, 0] == 5.0 and s[2, 1] == 3.0 and s[1, 1] == 0.0 and s[0, 1] == float("-inf")


def test_bad_arguments():
    inputs = random_inputs(heads=4, groups=3)
    with pytest.raises(ValueError, match=r"groups \(3\) must divide the number of heads \(4\)"):
        ssd_scan(chunk_size=4, **inputs)
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        ssd_scan(chunk_size=0, **random_inputs())


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: the error relative to the tensor's scale."""
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("groups", [2, 4])  # g < h and g == h
@pytest.mark.parametrize("length, chunk", [(45, 16), (20, 64)])  # l not a multiple of chunk; one chunk
@pytest.mark.parametrize("with_d_z", [False, True])
def test_float32_scan_within_1e5_of_the_recurrence_values_and_gradients(groups, length, chunk, with_d_z):
    """The issue's accuracy target: fp32 ssd_scan against the float64 recurrence, 1e-5 relative."""
    inputs = random_inputs(length=length, groups=groups, seed=5)
    if with_d_z:
        inputs["D"] = torch.randn(4, 8, dtype=torch.float64)
        inputs["z"] = torch.randn(2, length, 4, 8, dtype=torch.float64)
    names = [k for k, v in inputs.items() if torch.is_tensor(v)]
    upstream = torch.randn(2, length, 4, 8, dtype=torch.float64)
    results = []
    for run, dtype in ((lambda i: ssd_scan(chunk_size=chunk, **i), torch.float32), (lambda i: ssd_sequential(**i), torch.float64)):
        leaves = {k: v.to(dtype).requires_grad_(True) if k in names else v for k, v in inputs.items()}
        y = run(leaves)
        grads = torch.autograd.grad((y * upstream.to(dtype)).sum(), [leaves[k] for k in names])
        results.append([y, *grads])
    for name, got, want in zip(["y", *names], *results):
        assert got.dtype == torch.float32
        assert relative_error(got, want) < 1e-5, name


@pytest.mark.parametrize("length, chunk", [(37, 8), (8, 8)])
def test_without_autograd_the_same_values(length, chunk):
    """Under no_grad (evaluation) the chunks are not checkpointed: the same outputs."""
    inputs = random_inputs(length=length, groups=2)
    inputs["D"] = torch.randn(4, dtype=torch.float64)
    reference = ssd_sequential(**inputs)
    with torch.no_grad():
        torch.testing.assert_close(ssd_scan(chunk_size=chunk, **inputs), reference, rtol=1e-10, atol=1e-10)
    leaves = {k: v.clone().requires_grad_(True) if k == "x" else v for k, v in inputs.items()}
    torch.testing.assert_close(ssd_scan(chunk_size=chunk, **leaves), reference, rtol=1e-10, atol=1e-10)


def test_b_and_c_must_match():
    inputs = random_inputs(groups=2)
    inputs["C"] = inputs["C"][:, :, :1]
    with pytest.raises(ValueError, match=r"B and C must have the same shape"):
        ssd_scan(chunk_size=4, **inputs)
