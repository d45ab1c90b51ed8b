"""The inter-event time channel: gaps, the time path of a TiSSD block, the dual-channel Fourier filter.

Every operation here that mixes positions reads padding-masked inputs causally (a causal
convolution, a cumulative statistic, or a window of the last positions), so the value at a real
position depends only on the real positions up to it: never on the target's timestamp, on later
positions, on how much padding surrounds the sequence, or on other sequences of the batch. The
paper's reference code mixed positions with Linear(L, L), a LayerNorm over positions and a
circular FFT, which leaks the target's time and encodes the padding length; see each class for
what replaces them.

Two forms (``time_path_form``):
  * ``paper``: the reference's computation, made causal, with its initialisation: the time scale
    ends in a Tanhshrink (flat at 0, so an N(0, 0.02)-initialised scale starts at ~0 with ~0
    gradient), dt is multiplied by the time path's output, and the Fourier filter's weights start
    at N(0, 0.02) (its output starts at ~0). As initialised, the gap never reaches the Cross-SSD.
  * ``residual`` (default): the smallest changes that let the gap through: the scale multiplies
    the gaps as ``1 + scale`` (the gaps pass when the scale is 0), the time path's output is
    added to dt before the softplus instead of multiplying it, and the Fourier filter starts as
    the mean of its two channels (its adaptive part at N(0, 0.02) on top).

Shapes: b batch, l positions, c channels (one per SSD head).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mmm4rec.kernels import causal_conv1d


def time_gaps(timestamps: torch.Tensor, mask: torch.Tensor, time_unit: float) -> torch.Tensor:
    """Normalised gaps between consecutive real events.

    Args:
        timestamps: (b, l) event times of the history (RecBole's ``timestamp_list``).
        mask: (b, l) bool, True at real positions (padding may sit on either side).
        time_unit: seconds per unit of gap, e.g. 86400 for days.
    Returns:
        (b, l) float32 ``log1p(gap / time_unit)``; 0 at each sequence's first real position and
        at padding. Computed per position, so it never depends on other positions' gaps.
    """
    previous = F.pad(timestamps[:, :-1], (1, 0))
    previous_is_real = F.pad(mask[:, :-1], (1, 0), value=False)
    gaps = (timestamps - previous).clamp(min=0) / time_unit
    gaps = torch.where(mask & previous_is_real, gaps, torch.zeros_like(gaps))
    return torch.log1p(gaps).float()


def masked_causal_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor,
    activation: str | None = None,
) -> torch.Tensor:
    """Causal depthwise convolution of (b, c, l) over padding-zeroed inputs; padding stays zero.

    ``mask`` is (b, 1, l). Zeroing the input makes padding before a sequence act like the
    convolution's own zero padding; zeroing the output keeps biases off padding positions.
    """
    return causal_conv1d(x * mask, weight, bias, activation) * mask


TIME_PATH_FORMS = ("residual", "paper")


def check_time_path_form(form: str) -> None:
    """A ValueError naming the config key unless ``form`` is one of :data:`TIME_PATH_FORMS`."""
    if form not in TIME_PATH_FORMS:
        raise ValueError(f"MMM4Rec: time_path_form must be one of {list(TIME_PATH_FORMS)}, found {form!r}")


def causal_rms_norm(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-channel RMS normalisation over the real positions up to each position.

    The paper normalises the updated time channel with a LayerNorm over positions (which sees
    the future and the padding). A norm over channels instead would erase it: in the first layer
    every channel carries the same gap, so centring over channels removes it exactly and an RMS
    over channels turns it into +-1. Normalising each channel by its own causal RMS keeps the
    gaps' shape over time, and without centring a constant gap stays a non-zero constant.

    Args:
        x: (b, c, l), zero at padding.
        mask: (b, 1, l) float, 1 at real positions.
        weight: (c,) learned scale.
    Returns:
        (b, c, l), zero at padding.
    """
    mean_square = (x * x * mask).cumsum(-1) / mask.cumsum(-1).clamp(min=1)
    return x * torch.rsqrt(mean_square + eps) * weight.unsqueeze(-1) * mask


class TimeModulation(nn.Module):
    """The time path of a TiSSD block: the dt modulation and the updated time channel.

    The paper's steps, made causal:
      1. scale = mixer(SiLU(mixer(dropout(channel)))), then Tanhshrink (``paper``) or none
         (``residual``). The reference's Linear(L, L) over positions becomes a causal Toeplitz
         mixer: a kernel of ``max_seq_length`` taps shared by all channels, so position t mixes
         t and its past only and the weights depend on distance, not on where the sequence
         starts in the padding.
      2. time_dt = SiLU(conv(SiLU(conv(channel * scale)))), ``channel * (1 + scale)`` in the
         residual form; depthwise causal convs per channel.
      3. gate = sigmoid(mixer(dropout(channel))), per sample, channel and position (the
         reference's Linear(L, 1) over positions, made a causal mixer), and the updated channel
         = causal RMS norm (:func:`causal_rms_norm`) of ``gate * channel + (1 - gate) * time_dt``.

    Args:
        channels: time channels (the SSD heads).
        max_seq_length: taps of the position mixers (the longest history).
        conv_width: taps of the two depthwise convs.
        norm_eps: epsilon of the causal RMS norm.
        dropout_prob: time dropout before the scale and the gate mixers.
        form: ``residual`` or ``paper`` (see the module docstring).
        update_channel: compute step 3; a block whose updated channel nobody reads (the
            Cross-SSD) goes without, so it holds no parameters that never train.
    """

    def __init__(
        self,
        channels: int,
        max_seq_length: int,
        conv_width: int,
        norm_eps: float,
        dropout_prob: float = 0.0,
        form: str = "residual",
        update_channel: bool = True,
    ):
        super().__init__()
        check_time_path_form(form)
        self.form, self.norm_eps = form, norm_eps
        # The paper initialises its Linear(L, L) mixers N(0, 0.02); with a Tanhshrink after them
        # the scale starts flat. The residual form keeps nn.Linear(L, L)'s range.
        bound = 1 / math.sqrt(max_seq_length)
        mixer = torch.empty(2, max_seq_length)
        self.mixer_weights = nn.Parameter(mixer.normal_(0, 0.02) if form == "paper" else mixer.uniform_(-bound, bound))
        self.mixer_biases = nn.Parameter(torch.zeros(2) if form == "paper" else torch.empty(2).uniform_(-bound, bound))
        conv_bound = 1 / math.sqrt(conv_width)
        self.conv_weights = nn.Parameter(torch.empty(2, channels, conv_width).uniform_(-conv_bound, conv_bound))
        self.conv_biases = nn.Parameter(torch.empty(2, channels).uniform_(-conv_bound, conv_bound))
        self.dropout = nn.Dropout(dropout_prob)
        if update_channel:  # the gate starts at 0.5, as the reference's N(0, 0.02) Linear(L, 1)
            self.gate_weight = nn.Parameter(torch.empty(max_seq_length).normal_(0, 0.02))
            self.gate_bias = nn.Parameter(torch.zeros(1))
            self.norm_weight = nn.Parameter(torch.ones(channels))
        else:
            self.gate_weight = self.gate_bias = self.norm_weight = None

    def forward(self, time_channel: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(b, l, c) channel and (b, l) mask -> time_dt (b, l, c), updated channel (b, l, c) or None."""
        channels = time_channel.shape[-1]
        conv_mask = mask.unsqueeze(1).to(time_channel.dtype)
        channel = time_channel.transpose(1, 2) * conv_mask  # (b, c, l)

        def mix(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, activation: str | None) -> torch.Tensor:
            return masked_causal_conv(x, weight.expand(channels, -1), bias.expand(channels), conv_mask, activation)

        scale = mix(
            mix(self.dropout(channel), self.mixer_weights[0], self.mixer_biases[0], "silu"),
            self.mixer_weights[1],
            self.mixer_biases[1],
            None,
        )
        time_dt = channel * F.tanhshrink(scale) if self.form == "paper" else channel * (1 + scale)
        for index in range(2):
            time_dt = masked_causal_conv(
                time_dt, self.conv_weights[index], self.conv_biases[index], conv_mask, "silu"
            )
        if self.gate_weight is None:
            return time_dt.transpose(1, 2), None
        gate = torch.sigmoid(mix(self.dropout(channel), self.gate_weight, self.gate_bias, None))
        mixed = gate * channel + (1 - gate) * time_dt
        updated = causal_rms_norm(mixed, conv_mask, self.norm_weight, self.norm_eps)
        return time_dt.transpose(1, 2), updated.transpose(1, 2)


def complex_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ W^T + b`` over the last axis of complex ``x`` (..., n), with W (2, m, n) and b (2, m)
    holding the real and imaginary parts."""
    return x @ torch.complex(weight[0], weight[1]).transpose(0, 1) + torch.complex(bias[0], bias[1])


class FourierTimeFilter(nn.Module):
    """Dual-channel Fourier adaptive filter: fuses two modalities' time channels.

    The paper's filter, per position of a causal window: the spectrum X of each channel (rfft,
    orthonormal) is multiplied by complex weights computed from that spectrum, ``X * W_k(X)``
    with ``W_k`` a complex linear map over the frequency bins (input-adaptive), the two are
    summed, mixed across bins by a third complex linear map, and transformed back (irfft). The
    reference transformed the whole padded sequence at once, which mixes the future and the
    padding into every position. Here each position t transforms the window of the last
    ``max_seq_length`` positions ending at t (padding and positions before the sequence are
    zeros) and keeps the back-transform's value at t: it sees positions t-L+1 .. t of both
    channels and nothing else, and its weights depend on that causal history.

    Args:
        channels: time channels per modality (the SSD heads); the maps are shared by channels,
            as the reference's are.
        max_seq_length: L, the window (the longest history).
        form: ``residual``: ``W_k`` starts at 0.5 and the bin mixer at the identity, so the
            filter starts as the mean of the two channels; ``paper``: every weight N(0, 0.02)
            and zero biases, so its output starts at ~0 (about 0.02^2 of its input).
    """

    def __init__(self, channels: int, max_seq_length: int, form: str = "residual"):
        super().__init__()
        check_time_path_form(form)
        self.window = max_seq_length
        bins = max_seq_length // 2 + 1
        self.input_weights = nn.Parameter(torch.empty(2, 2, bins, bins).normal_(0, 0.02))  # (channel, re/im, out, in)
        self.input_biases = nn.Parameter(torch.zeros(2, 2, bins))
        self.output_weight = nn.Parameter(torch.empty(2, bins, bins).normal_(0, 0.02))
        self.output_bias = nn.Parameter(torch.zeros(2, bins))
        if form == "residual":
            # W_k(X) = 0.5 exactly and an identity bin mixer: the mean of the two channels. The
            # adaptive weights still train from zero: X * W(X) is quadratic in X.
            with torch.no_grad():
                self.input_weights.zero_()
                self.input_biases[:, 0].fill_(0.5)
                self.output_weight.zero_()
                self.output_weight[0] = torch.eye(bins)

    def forward(self, primary: torch.Tensor, secondary: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(b, l, c) time channels of the two streams, (b, l) mask -> fused (b, l, c)."""
        real = mask.unsqueeze(-1).to(primary.dtype)
        fused = 0
        for index, channel in enumerate((primary, secondary)):
            # (b, c, l, window): the window of the last positions ending at each position.
            windows = F.pad((channel * real).transpose(1, 2), (self.window - 1, 0)).unfold(-1, self.window, 1)
            spectrum = torch.fft.rfft(windows, dim=-1, norm="ortho")
            fused = fused + spectrum * complex_linear(spectrum, self.input_weights[index], self.input_biases[index])
        mixed = complex_linear(fused, self.output_weight, self.output_bias)
        current = torch.fft.irfft(mixed, n=self.window, dim=-1, norm="ortho")[..., -1]
        return current.transpose(1, 2) * real
