"""The time channel's pieces: gaps, the time path and the Fourier filter are causal and padding-safe,
and carry the gaps."""
from __future__ import annotations

import math

import pytest
import torch

from recbole_mmm4rec.blocks import FourierTimeFilter, TimeModulation, causal_rms_norm, time_gaps

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


def test_causal_rms_norm_keeps_a_gap_that_every_channel_carries():
    """The first layer's channel is one gap repeated per head: a norm over channels would erase it
    (centring) or flatten it to +-1 (RMS); the causal RMS over positions keeps its shape."""
    gaps = torch.tensor([[0.0, 1.0, 3.0, 0.5, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]]).unsqueeze(1)
    x = gaps.unsqueeze(1).expand(1, 4, 6)  # (b, c, l): the same in every channel
    out = causal_rms_norm(x, mask, torch.ones(4), eps=1e-12)
    expected = gaps / torch.sqrt((gaps**2).cumsum(-1).clamp(min=1e-12) / torch.arange(1, 7))
    expected[:, -1] = 0.0  # padding
    torch.testing.assert_close(out, expected.unsqueeze(1).expand(1, 4, 6))
    # Left padding changes nothing; later positions never reach earlier ones.
    padded = causal_rms_norm(torch.cat([x.new_zeros(1, 4, 3), x], -1), torch.cat([mask.new_zeros(1, 1, 3), mask], -1),
                             torch.ones(4), eps=1e-12)
    torch.testing.assert_close(padded[..., 3:], out)
    changed = x.clone()
    changed[..., 3] += 5
    torch.testing.assert_close(causal_rms_norm(changed, mask, torch.ones(4), 1e-12)[..., :3], out[..., :3])


@pytest.mark.parametrize("form", ["residual", "paper"])
def test_fourier_filter_is_causal_adaptive_and_padding_safe(form):
    torch.manual_seed(0)
    fourier = FourierTimeFilter(channels=3, max_seq_length=8, form=form)
    primary, secondary = torch.randn(2, 8, 3), torch.randn(2, 8, 3)
    mask = torch.ones(2, 8, dtype=torch.bool)
    start = fourier(primary, secondary, mask)
    if form == "residual":  # starts as the mean of the two channels
        torch.testing.assert_close(start, (primary + secondary) / 2)
    else:  # the reference's N(0, 0.02) weights: the output starts near 0
        assert start.abs().max() < 0.05 * primary.abs().max()

    with torch.no_grad():  # arbitrary weights
        for weights in fourier.parameters():
            weights.normal_(0, 0.5)
    reference = fourier(primary, secondary, mask)
    # Input-adaptive: its weights depend on the input, so doubling the input does not double the output.
    assert (fourier(2 * primary, 2 * secondary, mask) - 2 * reference).abs().max() > 1e-2
    later = secondary.clone()
    later[:, 5:] += 10.0
    changed = fourier(primary, later, mask)
    torch.testing.assert_close(changed[:, :5], reference[:, :5])
    assert (changed[:, 5:] - reference[:, 5:]).abs().max() > 1e-3
    # Longer than L: still causal and the same on the first L positions.
    extended = fourier(torch.cat([primary, torch.randn(2, 4, 3)], 1), torch.cat([secondary, torch.randn(2, 4, 3)], 1),
                       torch.ones(2, 12, dtype=torch.bool))
    torch.testing.assert_close(extended[:, :8], reference)
    # Left padding (garbage in the padded channel) shifts the outputs and changes none of them.
    left = fourier(torch.cat([torch.randn(2, 3, 3), primary], 1), torch.cat([torch.randn(2, 3, 3), secondary], 1),
                   torch.cat([torch.zeros(2, 3, dtype=torch.bool), mask], 1))
    torch.testing.assert_close(left[:, 3:], reference)
    assert not left[:, :3].any()
    # Every weight trains.
    (fourier(primary, secondary, mask) * torch.randn(2, 8, 3)).sum().backward()
    for name, weights in fourier.named_parameters():
        assert weights.grad.abs().sum() > 0, name


@pytest.mark.parametrize("form", ["residual", "paper"])
def test_time_modulation_is_causal_and_zero_on_padding(form):
    torch.manual_seed(0)
    path = TimeModulation(channels=4, max_seq_length=10, conv_width=4, norm_eps=1e-12, form=form)
    channel = torch.rand(3, 10, 4) * 3
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    channel = channel * mask.unsqueeze(-1)
    other_gaps = (torch.rand(3, 10, 4) * 3) * mask.unsqueeze(-1)
    gaps_effect = (path(channel, mask)[0] - path(other_gaps, mask)[0]).abs().max()
    if form == "paper":
        # As initialised, the Tanhshrink of an N(0, 0.02) scale is ~0: time_dt ignores the gaps.
        assert gaps_effect < 1e-5
        with torch.no_grad():
            path.mixer_weights.normal_(0, 0.5)
    else:
        assert gaps_effect > 0.1
    time_dt, updated = path(channel, mask)
    assert time_dt.shape == updated.shape == (3, 10, 4)
    assert not time_dt[1, 6:].any() and not updated[1, 6:].any()
    changed = channel.clone()
    changed[:, 7] += 5.0
    time_dt_changed, updated_changed = path(changed, mask)
    torch.testing.assert_close(time_dt_changed[:, :7], time_dt[:, :7])
    torch.testing.assert_close(updated_changed[:, :7], updated[:, :7])
    assert (time_dt_changed[0, 7:] - time_dt[0, 7:]).abs().max() > 1e-4
    assert (updated_changed[0, 7:] - updated[0, 7:]).abs().max() > 1e-4
    # Left padding (garbage in the padded channel) shifts the outputs and changes none of them.
    shifted = torch.cat([torch.rand(3, 5, 4) * 9, channel], 1)
    shifted_mask = torch.cat([torch.zeros(3, 5, dtype=torch.bool), mask], 1)
    time_dt_shifted, updated_shifted = path(shifted, shifted_mask)
    torch.testing.assert_close(time_dt_shifted[:, 5:], time_dt)
    torch.testing.assert_close(updated_shifted[:, 5:], updated)
    # Without the channel update (the Cross-SSD's), there is nothing to update and no parameter for it.
    no_update = TimeModulation(channels=4, max_seq_length=10, conv_width=4, norm_eps=1e-12, form=form, update_channel=False)
    assert no_update(channel, mask)[1] is None
    assert {name for name, _ in no_update.named_parameters()} == {
        "mixer_weights", "mixer_biases", "conv_weights", "conv_biases"
    }


def test_time_path_gate_is_per_sample_channel_and_position_and_time_dropout_applies_in_training():
    torch.manual_seed(0)
    path = TimeModulation(channels=2, max_seq_length=6, conv_width=4, norm_eps=1e-12, dropout_prob=0.5)
    with torch.no_grad():
        path.gate_weight.normal_()
    gates = []
    channel = torch.rand(2, 6, 2) * 3
    mask = torch.ones(2, 6, dtype=torch.bool)
    original_sigmoid = torch.sigmoid

    def capture(x):
        gates.append(x)
        return original_sigmoid(x)

    torch.sigmoid = capture
    try:
        path.eval()(channel, mask)
    finally:
        torch.sigmoid = original_sigmoid
    (gate,) = gates
    assert gate.shape == (2, 2, 6)
    assert gate.std(dim=-1).min() > 0 and (gate[0] - gate[1]).abs().max() > 0 and (gate[:, 0] - gate[:, 1]).abs().max() > 0
    # Time dropout: training outputs vary from call to call, evaluation ones never do.
    path.train()
    assert (path(channel, mask)[0] - path(channel, mask)[0]).abs().max() > 0
    path.eval()
    torch.testing.assert_close(path(channel, mask)[0], path(channel, mask)[0], rtol=0, atol=0)


def test_unknown_time_path_form_names_the_key():
    with pytest.raises(ValueError, match="time_path_form must be one of"):
        TimeModulation(channels=2, max_seq_length=6, conv_width=4, norm_eps=1e-12, form="fast")
