"""MMM4Rec's layers: modality adapters, the feed-forward network, and MMM4RecLayer.

Shapes: b batch, l positions, d hidden size, c time channels (SSD heads).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mmm4rec.blocks.item_features import ItemFeatureTable
from recbole_mmm4rec.blocks.ssd_block import TimeAwareSSD
from recbole_mmm4rec.blocks.time_channel import FourierTimeFilter

FFN_ACTIVATIONS = {"hardswish": F.hardswish, "gelu": F.gelu}


class ModalityAdapter(nn.Module):
    """A modality's frozen item features -> item vectors of the hidden size.

    :meth:`project` is ``Linear(features)`` plus, "with ID", a per-item bias vector (zero at the
    start, specific to one catalogue, so never transferred): what candidates are scored with,
    after an L2 normalisation. :meth:`forward`, the sequence input, adds dropout and LayerNorm,
    which in the paper's code belong to the history only.

    Args:
        feature_dim: size of the modality's features.
        hidden_size: size of the item vectors.
        n_items: items of the catalogue including padding 0, for the bias table (None: no table).
        dropout_prob: dropout before the LayerNorm of the sequence input.
        layer_norm_eps: its epsilon.
    """

    def __init__(
        self, feature_dim: int, hidden_size: int, n_items: int | None, dropout_prob: float, layer_norm_eps: float
    ):
        super().__init__()
        self.linear = nn.Linear(feature_dim, hidden_size)
        self.item_bias = nn.Embedding(n_items, hidden_size, padding_idx=0) if n_items else None
        self.dropout = nn.Dropout(dropout_prob)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def project(self, features: ItemFeatureTable, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``Linear(features) + bias`` of ``item_ids`` (any shape ``(*)`` -> ``(*, hidden_size)``),
        or of all items if None.

        The linear map goes over whichever is smaller: the rows asked for, or the whole catalogue
        then gathered (a batch of histories names each item many times).
        """
        if item_ids is None:
            item_ids = torch.arange(features.num_items, device=features.table.device)
            vectors = self.linear(features())
        elif item_ids.numel() > features.num_items:
            vectors = self.linear(features())[item_ids]
        else:
            vectors = self.linear(features(item_ids))
        if self.item_bias is not None:
            vectors = vectors + self.item_bias(item_ids)
        return vectors

    def forward(self, features: ItemFeatureTable, item_ids: torch.Tensor) -> torch.Tensor:
        """The sequence input: ``LayerNorm(dropout(project(features, item_ids)))``."""
        return self.norm(self.dropout(self.project(features, item_ids)))


class FeedForward(nn.Module):
    """``LayerNorm(x + dropout(W2 dropout(act(W1 x))))``, position-wise (the paper: Hardswish)."""

    def __init__(
        self, hidden_size: int, inner_size: int, dropout_prob: float, layer_norm_eps: float, activation: str = "hardswish"
    ):
        super().__init__()
        if activation not in FFN_ACTIVATIONS:
            raise ValueError(f"MMM4Rec: ffn_activation must be one of {list(FFN_ACTIVATIONS)}, found {activation!r}")
        self.activation = FFN_ACTIVATIONS[activation]
        self.expand = nn.Linear(hidden_size, inner_size)
        self.contract = nn.Linear(inner_size, hidden_size)
        self.dropout = nn.Dropout(dropout_prob)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        inner = self.dropout(self.activation(self.expand(hidden)))
        return self.norm(hidden + self.dropout(self.contract(inner)))


class MMM4RecLayer(nn.Module):
    """One MMM4Rec layer: the primary stream's TiSSD layer and its fusion with the secondary stream.

    1. Primary (text in the paper): ``p = FFN(LN(dropout(TiSSD(x_p)) + x_p))``.
    2. Secondary (image), with two streams: ``h_v = LN(dropout(TiSSD'(x_v)) + x_v)``, where TiSSD'
       is the primary's block when shared (the paper's sequence-level cross-modal alignment),
       else the layer's own.
    3. The two streams' updated time channels are fused by the dual-channel Fourier filter (or
       the secondary's is used as it is).
    4. Cross-SSD: x, B, dt from ``p``, C from ``h_v``, z from ``h_v + p``, driven by the fused
       channel; ``FFN(LN(dropout(out) + h_v + p))`` is the layer's secondary output.

    The layer decides which time updates are read (by the next layer, the Fourier filter or the
    secondary stream through the shared block) and builds only those, so that every parameter
    trains.

    Args:
        make_ssd: builds a TiSSD (``cross=False``) or Cross-SSD (``cross=True``) block, with
            ``update_time_channel`` as given.
        two_streams: whether there is a secondary stream to fuse.
        share_tissd: the secondary stream uses the primary's TiSSD.
        fourier: the time-channel filter, or None (no time channel, or the ablation).
        last: the model's last layer (nobody reads its time channels afterwards).
    """

    def __init__(
        self,
        make_ssd: Callable[..., TimeAwareSSD],
        hidden_size: int,
        inner_size: int,
        dropout_prob: float,
        layer_norm_eps: float,
        ffn_activation: str,
        two_streams: bool,
        share_tissd: bool,
        fourier: FourierTimeFilter | None,
        last: bool,
    ):
        super().__init__()
        primary_update_read = not last or (two_streams and (fourier is not None or share_tissd))
        self.primary_ssd: TimeAwareSSD = make_ssd(cross=False, update_time_channel=primary_update_read)
        self.dropout = nn.Dropout(dropout_prob)
        self.primary_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.primary_ffn = FeedForward(hidden_size, inner_size, dropout_prob, layer_norm_eps, ffn_activation)
        self.two_streams = two_streams
        if not two_streams:
            return
        self.secondary_ssd: TimeAwareSSD | None = None if share_tissd else make_ssd(cross=False, update_time_channel=True)
        self.fourier = fourier
        self.cross_ssd: TimeAwareSSD = make_ssd(cross=True, update_time_channel=False)
        self.secondary_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.cross_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.cross_ffn = FeedForward(hidden_size, inner_size, dropout_prob, layer_norm_eps, ffn_activation)

    def forward(
        self,
        primary: torch.Tensor,
        secondary: torch.Tensor | None,
        mask: torch.Tensor,
        primary_time: torch.Tensor | None,
        secondary_time: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(b, l, d) streams, (b, l) mask, (b, l, c) time channels (None without a time channel
        or a secondary stream) -> the same four, updated."""
        mixed, primary_time = self.primary_ssd(primary, mask, primary_time)
        primary = self.primary_ffn(self.primary_norm(self.dropout(mixed) + primary))
        if not self.two_streams:
            return primary, None, primary_time, None
        secondary_ssd = self.secondary_ssd if self.secondary_ssd is not None else self.primary_ssd
        mixed, secondary_time = secondary_ssd(secondary, mask, secondary_time)
        modality = self.secondary_norm(self.dropout(mixed) + secondary)
        cross_time = secondary_time
        if self.fourier is not None:
            cross_time = self.fourier(primary_time, secondary_time, mask)
        fused, _ = self.cross_ssd(primary, mask, cross_time, condition=modality)
        secondary = self.cross_ffn(self.cross_norm(self.dropout(fused) + modality + primary))
        return primary, secondary, primary_time, secondary_time
