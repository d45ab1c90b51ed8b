"""Mamba-2 state space duality (SSD) in pure PyTorch: a chunked scan and two references.

All three compute, per head ``h`` with state ``S`` of shape ``(p, n)``::

    delta_t = softplus(dt_t + dt_bias)          (or dt_t + dt_bias without dt_softplus)
    S_t     = exp(delta_t * A) * S_{t-1} + delta_t * x_t B_t^T
    y_t     = S_t C_t + D * x_t                 (D skip on the raw x, as in Mamba-2)
    y_t     = y_t * silu(z_t)                   (if z is given)

with the arguments and shapes of mamba-ssm's ``mamba_chunk_scan_combined``:

    x (b, l, h, p)   dt (b, l, h)   A (h)   B, C (b, l, g, n) with g dividing h
    D (h) or (h, p)  z (b, l, h, p) dt_bias (h)   ->   y (b, l, h, p)

* :func:`ssd_scan`: chunks of ``chunk_size`` steps; quadratic form inside a chunk, the state
  carried from chunk to chunk. Memory O(l * chunk_size) instead of O(l^2), and with several
  chunks each chunk's intermediates are recomputed in the backward pass rather than kept, so
  training holds one chunk's worth at a time. Any ``l``.
* :func:`ssd_sequential`: the recurrence, step by step (reference for tests).
* :func:`ssd_quadratic`: the dual form over the whole sequence, an (l, l) matrix per head, as
  the paper's code computes it (reference and benchmark baseline).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _check_shapes(x: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
    heads, groups = x.shape[2], B.shape[2]
    if B.shape != C.shape:
        raise ValueError(f"ssd: B and C must have the same shape (b, l, g, n), found {tuple(B.shape)} and {tuple(C.shape)}")
    if heads % groups:
        raise ValueError(f"ssd: the number of groups ({groups}) must divide the number of heads ({heads})")


def _step_sizes(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool) -> torch.Tensor:
    """delta (b, l, h) = softplus(dt + dt_bias), or dt + dt_bias without dt_softplus."""
    delta = dt if dt_bias is None else dt + dt_bias
    return F.softplus(delta) if dt_softplus else delta


def _discretize(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The references' preamble: the log-decay ``delta * A``, and B, C expanded from groups to heads.

    Returns log_decay (b, l, h), x_scaled = x * delta (b, l, h, p), B and C (b, l, h, n).
    """
    heads = x.shape[2]
    _check_shapes(x, B, C)
    delta = _step_sizes(dt, dt_bias, dt_softplus)
    if B.shape[2] != heads:
        B = B.repeat_interleave(heads // B.shape[2], dim=2)
        C = C.repeat_interleave(heads // C.shape[2], dim=2)
    return delta * A, x * delta.unsqueeze(-1), B, C


def _finish(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """D skip on the raw input, then the silu(z) gate."""
    if D is not None:
        y = y + x * (D.unsqueeze(-1) if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z)
    return y


def segment_sum(log_decay: torch.Tensor) -> torch.Tensor:
    """``(..., T) -> (..., T, T)``: entry [i, j] = sum of log_decay[j+1 .. i] for j <= i, else -inf.

    Summed from masked copies, not as a difference of cumulative sums, so it stays exact for
    long segments.
    """
    length = log_decay.shape[-1]
    expanded = log_decay.unsqueeze(-1).expand(*log_decay.shape, length)  # [..., i, j] = a_i
    strictly_lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=log_decay.device), -1)
    sums = torch.cumsum(expanded.masked_fill(~strictly_lower, 0), dim=-2)
    lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=log_decay.device))
    return sums.masked_fill(~lower, float("-inf"))


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    *,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """Chunked SSD; see the module docstring for the arguments. Returns y (b, l, h, p).

    A sequence of at most ``chunk_size`` steps is one chunk of its own length, so short histories
    cost what the quadratic form costs. Longer ones run chunk by chunk, each chunk receiving the
    state the previous one left; under autograd each chunk is checkpointed (its inputs and
    incoming state kept, the rest recomputed in the backward pass), which bounds the training
    memory by one chunk's intermediates plus one (b, h, p, n) state per chunk.
    """
    if chunk_size < 1:
        raise ValueError(f"ssd_scan: chunk_size must be positive, got {chunk_size}")
    length = x.shape[1]
    _check_shapes(x, B, C)
    delta = _step_sizes(dt, dt_bias, dt_softplus)
    log_decay = delta * A
    if length <= chunk_size:
        y, _ = _ssd_chunk(x, delta, log_decay, B, C, None, False)
        return _finish(y, x, D, z)
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (x, delta, B, C))
    # split, not slicing: the backward then joins the chunks' gradients once, instead of adding
    # each chunk's into a zero tensor of the whole length (quadratic in l).
    chunks = zip(*(t.split(chunk_size, dim=1) for t in (x, delta, log_decay, B, C)))
    outputs, state = [], None
    for index, chunk_inputs in enumerate(chunks):
        return_state = (index + 1) * chunk_size < length
        if recompute:
            y, state = checkpoint(_ssd_chunk, *chunk_inputs, state, return_state, use_reentrant=False)
        else:
            y, state = _ssd_chunk(*chunk_inputs, state, return_state)
        outputs.append(y)
    return _finish(torch.cat(outputs, dim=1), x, D, z)


def _ssd_chunk(
    x: torch.Tensor,
    delta: torch.Tensor,
    log_decay: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None,
    return_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk of s steps: the SSD outputs without the D skip, and the state it leaves.

    x (b, s, h, p), delta and log_decay (b, s, h), B and C (b, s, g, n), incoming state
    (b, h, p, n) or None for zero -> y (b, s, h, p), outgoing state (b, h, p, n) or None.
    Computed head-major, (b, h, s, d), so each product is one batched matmul; C B^T is formed
    once per group before the heads of the group share it.
    """
    batch, steps, heads, _ = x.shape
    groups = B.shape[2]
    # Contiguous head-major copies: CPU bmm on strided views loops over single matrices.
    x_h = x.transpose(1, 2).contiguous()  # (b, h, s, p)
    B_g, C_g = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()  # (b, g, s, n)
    delta_h, log_decay_h = delta.transpose(1, 2), log_decay.transpose(1, 2)  # (b, h, s)

    # 1. Inside the chunk, the quadratic form: y_t = sum_{u<=t} C_t.B_u decay(u..t] delta_u x_u.
    decay = torch.exp(segment_sum(log_decay_h)) * delta_h.unsqueeze(-2)  # (b, h, t, u)
    scores = (C_g @ B_g.transpose(-1, -2)).unsqueeze(2) * decay.view(batch, groups, heads // groups, steps, steps)
    y = scores.view(batch, heads, steps, steps) @ x_h  # (b, h, s, p)

    # 2. What the incoming state, decayed to each step, adds: C_t S decay(start..t].
    decay_from_start = torch.cumsum(log_decay_h, dim=-1)  # (b, h, s)
    if state is not None:
        y = y + (_per_head(C_g, heads) @ state.transpose(-1, -2)) * torch.exp(decay_from_start).unsqueeze(-1)
    if not return_state:
        return y.transpose(1, 2), None

    # 3. The state at the chunk's end: the incoming one decayed, plus the chunk's own inputs.
    # A difference of cumulative sums (cf. segment_sum) is exact enough over one chunk's steps.
    to_end = torch.exp(decay_from_start[..., -1:] - decay_from_start) * delta_h  # (b, h, s)
    new_state = (x_h * to_end.unsqueeze(-1)).transpose(-1, -2) @ _per_head(B_g, heads)  # (b, h, p, n)
    if state is not None:
        new_state = new_state + state * torch.exp(decay_from_start[..., -1]).unsqueeze(-1).unsqueeze(-1)
    return y.transpose(1, 2), new_state


def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, g, ...) -> (b, h, ...): head k uses group k // (h / g), as mamba-ssm."""
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


def ssd_sequential(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """The SSD recurrence one step at a time (reference). Returns y (b, l, h, p)."""
    log_decay, x_scaled, B, C = _discretize(x, dt, A, B, C, dt_bias, dt_softplus)
    batch, length, heads, head_dim = x.shape
    state = x.new_zeros(batch, heads, head_dim, B.shape[-1])
    outputs = []
    for t in range(length):
        state = torch.exp(log_decay[:, t])[..., None, None] * state + torch.einsum(
            "bhp,bhn->bhpn", x_scaled[:, t], B[:, t]
        )
        outputs.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    return _finish(torch.stack(outputs, dim=1), x, D, z)


def ssd_quadratic(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """The dual form: y = (exp(segment_sum) * C B^T) x over the whole sequence, (b, h, l, l)."""
    log_decay, x_scaled, B, C = _discretize(x, dt, A, B, C, dt_bias, dt_softplus)
    decay = torch.exp(segment_sum(log_decay.transpose(1, 2)))  # (b, h, l, l)
    y = torch.einsum("blhn,bshn,bhls,bshp->blhp", C, B, decay, x_scaled)
    return _finish(y, x, D, z)
