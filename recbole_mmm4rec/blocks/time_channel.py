"""The inter-event time channel: gaps, the time path of a TiSSD block, the dual-channel Fourier filter.

Every operation here that mixes positions is a causal convolution over padding-masked inputs, so
the value at a real position depends only on the real positions up to it: never on the target's
timestamp, on later positions, on how much padding surrounds the sequence, or on other
sequences of the batch. The paper's reference code mixed positions with Linear(L, L), a
LayerNorm over positions and a circular FFT, which leaks the target's time and encodes the
padding length; see each class for what replaces them.

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


class TimeModulation(nn.Module):
    """The time path of a TiSSD block: a multiplier for dt and the updated time channel.

    The paper's steps, made causal:
      1. scale = position mixer (SiLU) position mixer (Tanhshrink) of the time channel. The
         reference's Linear(L, L) over positions becomes a causal Toeplitz mixer: a kernel of
         ``max_seq_length`` taps shared by all channels, so position t mixes t and its past only
         and the weights depend on distance, not on where the sequence starts in the padding.
      2. time_dt = SiLU(conv(SiLU(conv(channel * scale)))), depthwise causal convs per channel.
      3. updated channel = LayerNorm over channels of a sigmoid-gated mix of the input channel
         and time_dt; the reference's LayerNorm over positions saw the future and the padding.

    Args:
        channels: time channels (the SSD heads).
        max_seq_length: taps of the position mixers (the longest history).
        conv_width: taps of the two depthwise convs.
        layer_norm_eps: epsilon of the channel LayerNorm.
        update_channel: compute step 3; a block whose updated channel nobody reads (the
            Cross-SSD) goes without, so it holds no parameters that never train.
    """

    def __init__(
        self, channels: int, max_seq_length: int, conv_width: int, layer_norm_eps: float, update_channel: bool = True
    ):
        super().__init__()
        bound = 1 / math.sqrt(max_seq_length)  # nn.Linear(L, L)'s initial range
        self.mixer_weights = nn.Parameter(torch.empty(2, max_seq_length).uniform_(-bound, bound))
        self.mixer_biases = nn.Parameter(torch.empty(2).uniform_(-bound, bound))
        conv_bound = 1 / math.sqrt(conv_width)
        self.conv_weights = nn.Parameter(torch.empty(2, channels, conv_width).uniform_(-conv_bound, conv_bound))
        self.conv_biases = nn.Parameter(torch.empty(2, channels).uniform_(-conv_bound, conv_bound))
        self.gate_logits = nn.Parameter(torch.zeros(channels)) if update_channel else None
        self.norm = nn.LayerNorm(channels, eps=layer_norm_eps) if update_channel else None

    def forward(self, time_channel: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(b, l, c) channel and (b, l) mask -> time_dt (b, l, c), updated channel (b, l, c) or None."""
        channels = time_channel.shape[-1]
        conv_mask = mask.unsqueeze(1).to(time_channel.dtype)
        channel = time_channel.transpose(1, 2) * conv_mask  # (b, c, l)

        def mix(x: torch.Tensor, index: int, activation: str | None) -> torch.Tensor:
            weight = self.mixer_weights[index].expand(channels, -1)
            bias = self.mixer_biases[index].expand(channels)
            return masked_causal_conv(x, weight, bias, conv_mask, activation)

        scale = F.tanhshrink(mix(mix(channel, 0, "silu"), 1, None))
        time_dt = channel * scale
        for index in range(2):
            time_dt = masked_causal_conv(
                time_dt, self.conv_weights[index], self.conv_biases[index], conv_mask, "silu"
            )
        if self.norm is None:
            return time_dt.transpose(1, 2), None
        gate = torch.sigmoid(self.gate_logits).unsqueeze(-1)
        mixed = (gate * channel + (1 - gate) * time_dt).transpose(1, 2)
        updated = self.norm(mixed) * mask.unsqueeze(-1)
        return time_dt.transpose(1, 2), updated


class FourierTimeFilter(nn.Module):
    """Dual-channel Fourier adaptive filter: fuses two modalities' time channels.

    As in the paper, each input channel gets learnable complex weights per frequency, the two
    are summed and filtered by a third set of complex weights. The reference applied them to a
    circular FFT of the padded sequence, which mixes the future and the padding into every
    position. Here the weights define the frequency response of a filter over ``2 * L`` points
    whose impulse response is truncated to its causal ``L`` taps and applied as a causal
    convolution: position t sees positions t-L+1 .. t of both channels and nothing else.

    Args:
        channels: time channels per modality (the SSD heads).
        max_seq_length: L, the longest history (the filters' taps).
    Initialised to the mean of the two channels (flat responses of 0.5, 0.5 and 1).
    """

    def __init__(self, channels: int, max_seq_length: int):
        super().__init__()
        self.taps = max_seq_length
        frequencies = max_seq_length + 1  # rfft bins of 2 * L points
        # Complex weights as real and imaginary parts. irfft ignores the imaginary part of the
        # first (0) and last (Nyquist) bins, so only the L - 1 bins between have one.
        self.input_real = nn.Parameter(torch.full((2, channels, frequencies), 0.5))
        self.input_imaginary = nn.Parameter(torch.zeros(2, channels, frequencies - 2))
        self.output_real = nn.Parameter(torch.ones(channels, frequencies))
        self.output_imaginary = nn.Parameter(torch.zeros(channels, frequencies - 2))

    def kernels(self) -> torch.Tensor:
        """(2, c, L) causal kernels, tap 0 = the current step, for the two input channels."""

        def complex_weights(real: torch.Tensor, imaginary: torch.Tensor) -> torch.Tensor:
            return torch.complex(real, F.pad(imaginary, (1, 1)))

        response = complex_weights(self.input_real, self.input_imaginary) * complex_weights(
            self.output_real, self.output_imaginary
        )
        impulse = torch.fft.irfft(response, n=2 * self.taps, dim=-1)
        return impulse[..., : self.taps]

    def forward(self, primary: torch.Tensor, secondary: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(b, l, c) time channels of the two streams, (b, l) mask -> fused (b, l, c)."""
        conv_mask = mask.unsqueeze(1).to(primary.dtype)
        # causal_conv1d multiplies the current step by the last column: reverse the taps.
        kernels = self.kernels().flip(-1)
        fused = sum(
            masked_causal_conv(channel.transpose(1, 2), kernel, None, conv_mask)
            for channel, kernel in zip((primary, secondary), kernels)
        )
        return fused.transpose(1, 2)
