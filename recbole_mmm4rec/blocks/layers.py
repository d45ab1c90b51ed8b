"""MMM4Rec's layers: modality adapters, the feed-forward network, TiSSDLayer and CoTiSSDLayer.

Shapes: b batch, l positions, d hidden size, c time channels (SSD heads).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mmm4rec.blocks.item_features import ItemFeatureTable
from recbole_mmm4rec.blocks.ssd_block import TimeAwareSSD
from recbole_mmm4rec.blocks.time_channel import FourierTimeFilter


class ModalityAdapter(nn.Module):
    """A modality's frozen item features -> item vectors of the hidden size.

    ``Linear(features)`` plus, "with ID", a per-item bias vector (zero at the start, specific to
    one catalogue, so never transferred), then dropout and LayerNorm.

    Args:
        feature_dim: size of the modality's features.
        hidden_size: size of the item vectors.
        n_items: items of the catalogue including padding 0, for the bias table (None: no table).
        dropout_prob: dropout before the LayerNorm.
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

    def forward(self, features: ItemFeatureTable, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors of ``item_ids`` (any shape ``(*)`` -> ``(*, hidden_size)``), or of all items if None.

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
        return self.norm(self.dropout(vectors))


class FeedForward(nn.Module):
    """``LayerNorm(x + dropout(W2 dropout(GELU(W1 x))))``, position-wise."""

    def __init__(self, hidden_size: int, inner_size: int, dropout_prob: float, layer_norm_eps: float):
        super().__init__()
        self.expand = nn.Linear(hidden_size, inner_size)
        self.contract = nn.Linear(inner_size, hidden_size)
        self.dropout = nn.Dropout(dropout_prob)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        inner = self.dropout(F.gelu(self.expand(hidden)))
        return self.norm(hidden + self.dropout(self.contract(inner)))


class TiSSDLayer(nn.Module):
    """The primary stream's layer (text in the paper): ``h = LN(dropout(TiSSD(x)) + x)``, then the FFN.

    Its TiSSD block is also applied to the secondary stream by :class:`CoTiSSDLayer` when the
    model shares it (the paper's sequence-level cross-modal alignment).
    """

    def __init__(self, ssd: TimeAwareSSD, hidden_size: int, inner_size: int, dropout_prob: float, layer_norm_eps: float):
        super().__init__()
        self.ssd = ssd
        self.dropout = nn.Dropout(dropout_prob)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ffn = FeedForward(hidden_size, inner_size, dropout_prob, layer_norm_eps)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, time_channel: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(b, l, d) stream, (b, l) mask, (b, l, c) time channel -> new stream and time channel."""
        mixed, time_channel = self.ssd(hidden, mask, time_channel)
        return self.ffn(self.norm(self.dropout(mixed) + hidden)), time_channel


class CoTiSSDLayer(nn.Module):
    """The secondary stream's layer (image in the paper), fused with the primary stream.

    1. ``h_v = LN(dropout(TiSSD(x_v)) + x_v)`` with the primary layer's TiSSD when shared
       (passed to :meth:`forward`), else this layer's own.
    2. The two streams' time channels are fused by the dual-channel Fourier filter.
    3. Cross-SSD: x, B, dt from the primary stream, C from h_v, z from h_v + primary, driven by
       the fused time channel; ``LN(dropout(out) + h_v + primary)``; the FFN.

    Args:
        own_ssd: this layer's TiSSD for the second modality, or None to use the shared one.
        cross_ssd: the Cross-SSD block.
        fourier: the time-channel filter, or None without a time channel.
    """

    def __init__(
        self,
        own_ssd: TimeAwareSSD | None,
        cross_ssd: TimeAwareSSD,
        fourier: FourierTimeFilter | None,
        hidden_size: int,
        inner_size: int,
        dropout_prob: float,
        layer_norm_eps: float,
    ):
        super().__init__()
        self.own_ssd = own_ssd
        self.cross_ssd = cross_ssd
        self.fourier = fourier
        self.dropout = nn.Dropout(dropout_prob)
        self.modality_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.cross_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ffn = FeedForward(hidden_size, inner_size, dropout_prob, layer_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        primary: torch.Tensor,
        mask: torch.Tensor,
        time_channel: torch.Tensor | None,
        primary_time_channel: torch.Tensor | None,
        shared_ssd: TimeAwareSSD | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fuse (b, l, d) ``hidden`` (secondary stream) with the (b, l, d) primary layer output.

        ``time_channel`` and ``primary_time_channel`` are the (b, l, c) channels of the
        secondary stream's input and of the primary layer's output. Returns the fused stream and the
        time channel that drove the Cross-SSD (the next layer's second-stream channel).
        """
        ssd = self.own_ssd if self.own_ssd is not None else shared_ssd
        if ssd is None:
            raise ValueError("CoTiSSDLayer: pass the shared TiSSD block, or build the layer with its own")
        mixed, time_channel = ssd(hidden, mask, time_channel)
        modality = self.modality_norm(self.dropout(mixed) + hidden)
        if self.fourier is not None:
            time_channel = self.fourier(primary_time_channel, time_channel, mask)
        fused, _ = self.cross_ssd(primary, mask, time_channel, condition=modality)
        return self.ffn(self.cross_norm(self.dropout(fused) + modality + primary)), time_channel
