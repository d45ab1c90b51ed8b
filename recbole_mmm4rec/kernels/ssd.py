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


def _check_groups(heads: int, groups: int) -> int:
    if heads % groups:
        raise ValueError(f"ssd: the number of groups ({groups}) must divide the number of heads ({heads})")
    return groups


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
    _check_groups(heads, B.shape[2])
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
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """Chunked SSD; see the module docstring for the arguments. Returns y (b, l, h, p).

    A sequence shorter than ``chunk_size`` is one chunk of its own length (no padding to a whole
    chunk), so short histories cost no more than the quadratic form. Internally every tensor is
    laid out head-major, (b, h or g, chunks, steps, d), so that each product is one batched
    matmul over contiguous blocks; B and C are multiplied per group, before heads share them.
    """
    if chunk_size < 1:
        raise ValueError(f"ssd_scan: chunk_size must be positive, got {chunk_size}")
    batch, length, heads, head_dim = x.shape
    groups = _check_groups(heads, B.shape[2])
    chunk_size = min(chunk_size, length)
    padding = (-length) % chunk_size
    chunks = (length + padding) // chunk_size

    def to_chunks(t: torch.Tensor) -> torch.Tensor:
        """(b, l, k, d) -> (b, k, chunks, chunk_size, d), contiguous. The padded end has zero
        step size and input, so it leaves the real steps unchanged."""
        t = F.pad(t, (0, 0, 0, 0, 0, padding)) if padding else t
        return t.reshape(batch, chunks, chunk_size, t.shape[2], t.shape[3]).permute(0, 3, 1, 2, 4).contiguous()

    delta_c = to_chunks(_step_sizes(dt, dt_bias, dt_softplus).unsqueeze(-1))  # (b, h, c, s, 1)
    x_c = to_chunks(x) * delta_c  # (b, h, c, s, p)
    B_c, C_c = to_chunks(B), to_chunks(C)  # (b, g, c, s, n)
    a_c = delta_c.squeeze(-1) * A.view(heads, 1, 1)  # (b, h, c, s) log-decays

    # 1. Inside each chunk: the quadratic (attention-like) form, C B^T once per group.
    decay_within = torch.exp(segment_sum(a_c)).view(batch, groups, heads // groups, chunks, chunk_size, chunk_size)
    scores = (C_c @ B_c.transpose(-1, -2)).unsqueeze(2) * decay_within
    y = scores.view(batch, heads, chunks, chunk_size, chunk_size) @ x_c  # (b, h, c, s, p)
    if chunks > 1:
        y = y + _incoming_state_outputs(x_c, _per_head(B_c, heads), _per_head(C_c, heads), a_c)
    y = y.permute(0, 2, 3, 1, 4).reshape(batch, chunks * chunk_size, heads, head_dim)[:, :length]
    return _finish(y, x, D, z)


def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, g, ...) -> (b, h, ...): head k uses group k // (h / g), as mamba-ssm."""
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


def _incoming_state_outputs(
    x_c: torch.Tensor, B_c: torch.Tensor, C_c: torch.Tensor, a_c: torch.Tensor
) -> torch.Tensor:
    """What the states carried in from earlier chunks add to each step (ssd_scan's steps 2-4).

    x_c (b, h, c, s, p) step-size-scaled inputs, B_c and C_c (b, h, c, s, n), log-decays a_c
    (b, h, c, s) -> (b, h, c, s, p). The first chunk receives a zero state.
    """
    batch, heads, chunks, _, head_dim = x_c.shape
    a_cumsum = torch.cumsum(a_c, dim=-1)
    # 2. The state each chunk leaves behind, from its own inputs: (b, h, c, p, n).
    decay_to_end = torch.exp(a_cumsum[..., -1:] - a_cumsum)
    chunk_states = (x_c * decay_to_end.unsqueeze(-1)).transpose(-1, -2) @ B_c

    # 3. Carry states across chunks (a small (c+1, c+1) recurrence in closed form); state 0 is zero.
    chunk_states = F.pad(chunk_states, (0, 0, 0, 0, 1, 0)).flatten(-2)  # (b, h, c+1, p*n)
    across = torch.exp(segment_sum(F.pad(a_cumsum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states_in = (across @ chunk_states)[:, :, :-1].unflatten(-1, (head_dim, -1))  # (b, h, c, p, n)

    # 4. What the incoming state contributes to each step of the chunk.
    return (C_c @ states_in.transpose(-1, -2)) * torch.exp(a_cumsum).unsqueeze(-1)


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
