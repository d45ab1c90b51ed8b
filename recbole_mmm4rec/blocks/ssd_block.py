"""TimeAwareSSD: the TiSSD block of MMM4Rec and, with a condition stream, its Cross-SSD block.

A Mamba-2 mixer whose step size dt is modulated by the time channel::

    self  (TiSSD):     [z, x, B, C, dt] from the input stream (IN_PROJ_LAYOUT)
    cross (Cross-SSD): [x, B, dt] from the input stream (text); C from the condition stream;
                       z from input + condition (CROSS_IN_PROJ_LAYOUT)

    xBC   = SiLU(causal_conv(xBC))                depthwise over positions
    dt    = dt + time_dt  (residual form)         time_dt from the time path (if any);
            dt * time_dt  (paper form)            see recbole_mmm4rec.blocks.time_channel
    delta = softplus(dt + dt_bias) * mask         0 at padding
    y     = SSD(x, delta, A, B, C) + D * x        D skip on the raw x
    out   = out_proj(rms_norm(y * silu(z)) * w)

Padding is inert: the input streams are zeroed there (the projections have no bias, so the
convolution sees zeros, like its own padding), and the step size is 0 there, so a padding step
neither writes to nor decays the state. Outputs at real positions are therefore the same however
much padding precedes or follows the history. The mixer's kernels (SSD scan, causal conv, gated
RMSNorm) are chosen by ``kernel_backend`` (see :mod:`recbole_mmm4rec.kernels.backends`), here
and nowhere else; the time path's convolutions (over a few channels, some with one tap per
history position) always run in torch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mmm4rec.blocks.time_channel import TimeModulation
from recbole_mmm4rec.kernels.backends import check_backend, select_kernels

# The in-projection's outputs in order, as mamba-ssm's Mamba2 splits them; "width" is the SSD
# width (expand * hidden), "state" n_groups * d_state, "heads" one dt per head.
IN_PROJ_LAYOUT = (("z", "width"), ("x", "width"), ("B", "state"), ("C", "state"), ("dt", "heads"))
# The Cross-SSD projects C from the condition stream and z from the sum of both streams.
CROSS_IN_PROJ_LAYOUT = (("x", "width"), ("B", "state"), ("dt", "heads"))


def ssd_dimensions(hidden_size: int, expand: int, head_dim: int, n_groups: int) -> tuple[int, int]:
    """(SSD width = expand * hidden_size, number of heads), or a ValueError naming the config keys to fix."""
    width = expand * hidden_size
    if width % head_dim:
        raise ValueError(
            f"MMM4Rec: expand * hidden_size = {expand} * {hidden_size} = {width} is not divisible "
            f"by head_dim = {head_dim}; change hidden_size, expand or head_dim"
        )
    heads = width // head_dim
    if heads % n_groups:
        raise ValueError(
            f"MMM4Rec: n_groups = {n_groups} must divide the number of heads "
            f"(expand * hidden_size / head_dim = {heads}); change n_groups or head_dim"
        )
    return width, heads


class TimeAwareSSD(nn.Module):
    """One TiSSD (``cross=False``) or Cross-SSD (``cross=True``) mixer.

    Args:
        hidden_size: size of the streams.
        expand: SSD width = expand * hidden_size.
        head_dim: channels per head (p); heads = SSD width / head_dim.
        d_state: state size per group (n).
        n_groups: groups of B and C shared by heads (g divides heads).
        conv_width: taps of the depthwise causal convs.
        max_seq_length: the longest history (taps of the time path's position mixers).
        chunk_size: SSD scan chunk.
        cross: C and z from a condition stream.
        time_channel: modulate dt by the time channel (False: dt unchanged, no time path).
        update_time_channel: also return an updated time channel (False where nothing reads it,
            so that no parameter goes untrained; the Cross-SSD never updates it).
        time_dropout_prob: the time path's dropout.
        time_path_form: ``residual`` or ``paper`` (see :mod:`recbole_mmm4rec.blocks.time_channel`).
        layer_norm_eps: epsilon of the time path's normalisation.
        rms_norm_eps: epsilon of the gated RMSNorm.
        kernel_backend: ``auto``, ``torch`` or ``cuda`` (see :func:`select_kernels`).
    """

    def __init__(
        self,
        hidden_size: int,
        expand: int,
        head_dim: int,
        d_state: int,
        n_groups: int,
        conv_width: int,
        max_seq_length: int,
        chunk_size: int,
        cross: bool = False,
        time_channel: bool = True,
        update_time_channel: bool = True,
        time_dropout_prob: float = 0.0,
        time_path_form: str = "residual",
        layer_norm_eps: float = 1e-12,
        rms_norm_eps: float = 1e-5,
        kernel_backend: str = "auto",
    ):
        super().__init__()
        self.ssd_width, self.heads = ssd_dimensions(hidden_size, expand, head_dim, n_groups)
        self.head_dim, self.n_groups, self.d_state = head_dim, n_groups, d_state
        self.chunk_size, self.cross, self.rms_norm_eps = chunk_size, cross, rms_norm_eps
        check_backend(kernel_backend)
        self.kernel_backend = kernel_backend
        sizes = {"width": self.ssd_width, "state": n_groups * d_state, "heads": self.heads}
        layout = CROSS_IN_PROJ_LAYOUT if cross else IN_PROJ_LAYOUT
        self.in_proj_names = [name for name, _ in layout]
        self.in_proj_sizes = [sizes[size] for _, size in layout]
        self.in_proj = nn.Linear(hidden_size, sum(self.in_proj_sizes), bias=False)
        if cross:
            self.c_proj = nn.Linear(hidden_size, sizes["state"], bias=False)
            self.z_proj = nn.Linear(hidden_size, self.ssd_width, bias=False)
        conv_channels = self.ssd_width + 2 * sizes["state"]  # x, B, C
        conv_bound = 1 / math.sqrt(conv_width)  # nn.Conv1d's initial range
        self.conv_weight = nn.Parameter(torch.empty(conv_channels, conv_width).uniform_(-conv_bound, conv_bound))
        self.conv_bias = nn.Parameter(torch.empty(conv_channels).uniform_(-conv_bound, conv_bound))
        # Mamba-2's initialisation: A in [1, 16], step sizes log-uniform in [1e-3, 1e-1].
        self.A_log = nn.Parameter(torch.log(torch.empty(self.heads).uniform_(1, 16)))
        initial_dt = torch.exp(torch.empty(self.heads).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias = nn.Parameter(initial_dt + torch.log(-torch.expm1(-initial_dt)))  # softplus^-1
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm_weight = nn.Parameter(torch.ones(self.ssd_width))
        self.out_proj = nn.Linear(self.ssd_width, hidden_size, bias=False)
        self.time_path_form = time_path_form
        self.time_path = (
            TimeModulation(
                self.heads,
                max_seq_length,
                conv_width,
                layer_norm_eps,
                time_dropout_prob,
                time_path_form,
                update_channel=update_time_channel and not cross,
            )
            if time_channel
            else None
        )

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        time_channel: torch.Tensor | None,
        condition: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mix one stream over positions.

        Args:
            hidden: (b, l, hidden_size) input stream (text for the Cross-SSD).
            mask: (b, l) bool, True at real positions.
            time_channel: (b, l, heads), or None when the block has no time path.
            condition: (b, l, hidden_size) condition stream; required iff ``cross``.
        Returns:
            (b, l, hidden_size) output and the updated (b, l, heads) time channel; None without
            a time path and for the Cross-SSD (the next layer's streams continue with the
            channels their TiSSD updated, as in the reference).
        """
        if (condition is not None) != self.cross:
            raise ValueError("TimeAwareSSD: a condition stream is required by, and only by, the Cross-SSD")
        kernels = select_kernels(self.kernel_backend, hidden.device)
        batch, length, _ = hidden.shape
        mask_f = mask.unsqueeze(-1).to(hidden.dtype)
        hidden = hidden * mask_f
        parts = dict(zip(self.in_proj_names, self.in_proj(hidden).split(self.in_proj_sizes, dim=-1)))
        if self.cross:
            condition = condition * mask_f
            parts["z"] = self.z_proj(hidden + condition)
            parts["C"] = self.c_proj(condition)
        z, dt = parts["z"], parts["dt"]
        xBC = torch.cat([parts["x"], parts["B"], parts["C"]], dim=-1)
        # (b, l, d) seen as (b, d, l), as causal-conv1d takes it: no copy for the torch kernel.
        xBC = kernels.causal_conv1d(xBC.transpose(1, 2), self.conv_weight, self.conv_bias, "silu").transpose(1, 2)
        state_size = self.n_groups * self.d_state
        x, B, C = xBC.split([self.ssd_width, state_size, state_size], dim=-1)

        updated_time = None
        if self.time_path is not None:
            time_dt, updated_time = self.time_path(time_channel, mask)
            dt = dt * time_dt if self.time_path_form == "paper" else dt + time_dt
        delta = F.softplus(dt + self.dt_bias) * mask_f
        y = kernels.ssd_scan(
            x.reshape(batch, length, self.heads, self.head_dim),
            delta,
            -torch.exp(self.A_log),
            B.reshape(batch, length, self.n_groups, self.d_state),
            C.reshape(batch, length, self.n_groups, self.d_state),
            chunk_size=self.chunk_size,
            D=self.D,
        ).reshape(batch, length, self.ssd_width)
        y = kernels.gated_rms_norm(
            y, self.norm_weight, z, eps=self.rms_norm_eps, group_size=self.ssd_width // self.n_groups
        )
        return self.out_proj(y), updated_time
