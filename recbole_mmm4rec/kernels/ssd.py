"""Mamba-2 state space duality (SSD) in pure PyTorch: a chunked scan and two references.

All three compute, per head ``h`` with state ``S`` of shape ``(p, n)``::

    delta_t = softplus(dt_t + dt_bias)          (or dt_t + dt_bias without dt_softplus)
    S_t     = exp(delta_t * A) * S_{t-1} + delta_t * x_t B_t^T
    y_t     = S_t C_t + D * x_t                 (D skip on the raw x, as in Mamba-2)
    y_t     = y_t * silu(z_t)                   (if z is given)

with the arguments and shapes of mamba-ssm's ``mamba_chunk_scan_combined``:

    x (b, l, h, p)   dt (b, l, h)   A (h)   B, C (b, l, g, n) with g dividing h
    D (h) or (h, p)  z (b, l, h, p) dt_bias (h)   ->   y (b, l, h, p)

* :func:`ssd_scan`: chunks of ``chunk_size`` steps; quadratic form inside a chunk, state
  recurrence between chunks. Memory O(l * chunk_size) instead of O(l^2). Any ``l``.
* :func:`ssd_sequential`: the recurrence, step by step (reference for tests).
* :func:`ssd_quadratic`: the dual form over the whole sequence, an (l, l) matrix per head, as
  the paper's code computes it (reference and benchmark baseline).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _discretize(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shared preamble: delta, the log-decay ``delta * A``, and B, C expanded from groups to heads.

    Returns delta (b, l, h), log_decay (b, l, h), x_scaled = x * delta (b, l, h, p),
    B and C (b, l, h, n).
    """
    heads, groups = x.shape[2], B.shape[2]
    if heads % groups:
        raise ValueError(f"ssd: the number of groups ({groups}) must divide the number of heads ({heads})")
    delta = dt if dt_bias is None else dt + dt_bias
    if dt_softplus:
        delta = F.softplus(delta)
    log_decay = delta * A
    x_scaled = x * delta.unsqueeze(-1)
    if groups != heads:
        B = B.repeat_interleave(heads // groups, dim=2)
        C = C.repeat_interleave(heads // groups, dim=2)
    return delta, log_decay, x_scaled, B, C


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
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """Chunked SSD; see the module docstring for the arguments. Returns y (b, l, h, p)."""
    if chunk_size < 1:
        raise ValueError(f"ssd_scan: chunk_size must be positive, got {chunk_size}")
    batch, length, heads, head_dim = x.shape
    _, log_decay, x_scaled, B, C = _discretize(x, dt, A, B, C, dt_bias, dt_softplus)

    # 0. Pad the end to whole chunks: zero decay-log and zero input leave real steps unchanged.
    padding = (-length) % chunk_size
    if padding:
        x_scaled = F.pad(x_scaled, (0, 0, 0, 0, 0, padding))
        log_decay = F.pad(log_decay, (0, 0, 0, padding))
        B = F.pad(B, (0, 0, 0, 0, 0, padding))
        C = F.pad(C, (0, 0, 0, 0, 0, padding))
    chunks = (length + padding) // chunk_size
    x_c = x_scaled.reshape(batch, chunks, chunk_size, heads, head_dim)
    B_c = B.reshape(batch, chunks, chunk_size, heads, -1)
    C_c = C.reshape(batch, chunks, chunk_size, heads, -1)
    a_c = log_decay.reshape(batch, chunks, chunk_size, heads).permute(0, 3, 1, 2)  # (b, h, c, s)

    # 1. Inside each chunk: the quadratic (attention-like) form.
    within = torch.exp(segment_sum(a_c))  # (b, h, c, s, s)
    scores = torch.einsum("bclhn,bcshn->bhcls", C_c, B_c) * within
    y = torch.einsum("bhcls,bcshp->bclhp", scores, x_c)
    if chunks > 1:
        y = y + _incoming_state_outputs(x_c, B_c, C_c, a_c)
    y = y.reshape(batch, chunks * chunk_size, heads, head_dim)[:, :length]
    return _finish(y, x, D, z)


def _incoming_state_outputs(
    x_c: torch.Tensor, B_c: torch.Tensor, C_c: torch.Tensor, a_c: torch.Tensor
) -> torch.Tensor:
    """What the states carried in from earlier chunks add to each step (ssd_scan's steps 2-4).

    x_c (b, c, s, h, p), B_c and C_c (b, c, s, h, n), log-decays a_c (b, h, c, s) -> (b, c, s, h, p).
    The first chunk receives a zero state, so a single chunk needs none of this.
    """
    a_cumsum = torch.cumsum(a_c, dim=-1)
    # 2. The state each chunk leaves behind, from its own inputs.
    decay_to_end = torch.exp(a_cumsum[..., -1:] - a_cumsum)  # (b, h, c, s)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B_c, decay_to_end, x_c)

    # 3. Carry states across chunks (a small (c+1, c+1) recurrence in closed form).
    chunk_states = torch.cat([torch.zeros_like(chunk_states[:, :1]), chunk_states], dim=1)
    across = torch.exp(segment_sum(F.pad(a_cumsum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states_in = torch.einsum("bhzc,bchpn->bzhpn", across, chunk_states)[:, :-1]

    # 4. What the incoming state contributes to each step of the chunk.
    return torch.einsum("bclhn,bchpn,bhcl->bclhp", C_c, states_in, torch.exp(a_cumsum))


def ssd_sequential(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """The SSD recurrence one step at a time (reference). Returns y (b, l, h, p)."""
    _, log_decay, x_scaled, B, C = _discretize(x, dt, A, B, C, dt_bias, dt_softplus)
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
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """The dual form: y = (exp(segment_sum) * C B^T) x over the whole sequence, (b, h, l, l)."""
    _, log_decay, x_scaled, B, C = _discretize(x, dt, A, B, C, dt_bias, dt_softplus)
    decay = torch.exp(segment_sum(log_decay.transpose(1, 2)))  # (b, h, l, l)
    y = torch.einsum("blhn,bshn,bhls,bshp->blhp", C, B, decay, x_scaled)
    return _finish(y, x, D, z)
