"""The time channel's pieces: gaps, the time path and the Fourier filter are causal and padding-safe."""
from __future__ import annotations

import math

import torch

from recbole_mmm4rec.blocks import FourierTimeFilter, TimeModulation, time_gaps

DAY = 86400.0


def test_time_gaps_per_position_with_padding_on_either_side():
    timestamps = torch.tensor(
        [
            [10 * DAY, 11 * DAY, 13 * DAY, 12 * DAY, 0.0, 0.0],  # right padding, one out-of-order event
            [0.0, 0.0, 10 * DAY, 11 * DAY, 13 * DAY, 12 * DAY],  # the same history, left padded
        ],
        dtype=torch.float64,
    )
    mask = timestamps > 0
    gaps = time_gaps(timestamps, mask, DAY)
    expected = torch.tensor([0.0, math.log(2), math.log(3), 0.0])  # first real 0; negative gap -> 0
    assert gaps.dtype == torch.float32
    torch.testing.assert_close(gaps[0, :4], expected)
    torch.testing.assert_close(gaps[1, 2:], expected)
    assert not gaps[0, 4:].any() and not gaps[1, :2].any()


def test_fourier_filter_starts_as_the_mean_and_is_causal():
    torch.manual_seed(0)
    fourier = FourierTimeFilter(channels=3, max_seq_length=8)
    primary, secondary = torch.randn(2, 8, 3), torch.randn(2, 8, 3)
    mask = torch.ones(2, 8, dtype=torch.bool)
    torch.testing.assert_close(fourier(primary, secondary, mask), (primary + secondary) / 2)

    with torch.no_grad():  # arbitrary complex responses
        for weights in fourier.parameters():
            weights.normal_()
    reference = fourier(primary, secondary, mask)
    later = secondary.clone()
    later[:, 5:] += 10.0
    changed = fourier(primary, later, mask)
    torch.testing.assert_close(changed[:, :5], reference[:, :5])
    assert (changed[:, 5:] - reference[:, 5:]).abs().max() > 1e-3
    # Longer than L: still causal and the same on the first L positions.
    extended = fourier(torch.cat([primary, torch.randn(2, 4, 3)], 1), torch.cat([secondary, torch.randn(2, 4, 3)], 1),
                       torch.ones(2, 12, dtype=torch.bool))
    torch.testing.assert_close(extended[:, :8], reference)
    # Left padding shifts the outputs and changes none of them.
    left = fourier(torch.cat([torch.randn(2, 3, 3), primary], 1), torch.cat([torch.randn(2, 3, 3), secondary], 1),
                   torch.cat([torch.zeros(2, 3, dtype=torch.bool), mask], 1))
    torch.testing.assert_close(left[:, 3:], reference)
    # Every element of every weight trains (irfft ignores the imaginary DC and Nyquist bins,
    # which therefore have no parameter).
    (fourier(primary, secondary, mask) * torch.randn(2, 8, 3)).sum().backward()
    for name, weights in fourier.named_parameters():
        assert (weights.grad != 0).all(), name


def test_time_modulation_is_causal_and_zero_on_padding():
    torch.manual_seed(0)
    path = TimeModulation(channels=4, max_seq_length=10, conv_width=4, layer_norm_eps=1e-12)
    channel = torch.rand(3, 10, 4) * 3
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    channel = channel * mask.unsqueeze(-1)
    time_dt, updated = path(channel, mask)
    assert time_dt.shape == updated.shape == (3, 10, 4)
    assert not time_dt[1, 6:].any() and not updated[1, 6:].any()
    changed = channel.clone()
    changed[:, 7] += 5.0
    time_dt_changed, updated_changed = path(changed, mask)
    torch.testing.assert_close(time_dt_changed[:, :7], time_dt[:, :7])
    torch.testing.assert_close(updated_changed[:, :7], updated[:, :7])
    assert (time_dt_changed[0, 7:] - time_dt[0, 7:]).abs().max() > 1e-4
    # Left padding (garbage in the padded channel) shifts the outputs and changes none of them.
    shifted = torch.cat([torch.rand(3, 5, 4) * 9, channel], 1)
    shifted_mask = torch.cat([torch.zeros(3, 5, dtype=torch.bool), mask], 1)
    time_dt_shifted, updated_shifted = path(shifted, shifted_mask)
    torch.testing.assert_close(time_dt_shifted[:, 5:], time_dt)
    torch.testing.assert_close(updated_shifted[:, 5:], updated)
    # Without the channel update (the Cross-SSD's), there is nothing to update and no parameter for it.
    no_update = TimeModulation(channels=4, max_seq_length=10, conv_width=4, layer_norm_eps=1e-12, update_channel=False)
    assert no_update(channel, mask)[1] is None
    assert {name for name, _ in no_update.named_parameters()} == {
        "mixer_weights", "mixer_biases", "conv_weights", "conv_biases"
    }
