"""UniSRec's MoE adaptor: a gated mixture of parametric-whitening experts over frozen text features.

Hou et al., "Towards Universal Sequence Representation Learning for Recommender Systems",
KDD 2022, section 3.2. Shapes: ``*`` any leading shape, f feature size, d hidden size,
g experts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MoEAdaptor(nn.Module):
    r"""``v = sum_k g_k (x - b_k) W_k`` with ``g = softmax(x W_gate + noise)``.

    Each expert is a parametric whitening ``(x - b_k) W_k``: a learned centre ``b_k`` and
    projection ``W_k`` in place of the data's mean and whitening matrix, so that features of
    different domains can be moved into one space and the map can be fine-tuned to a new
    domain. While training, the gate logits get Gaussian noise of standard deviation
    ``softplus(x W_noise)`` (the paper's ``Norm() * Softplus(x W_3)``), which spreads the load
    over the experts.

    The experts share one dropout mask on ``x`` and their projections run as one matmul
    (``(x - b_k) W_k = x W_k - b_k W_k``): g times fewer passes over a large feature batch.

    Args:
        feature_dim: f, the size of the frozen features.
        hidden_size: d, the size of the item vectors.
        n_experts: g, the number of whitening experts.
        dropout_prob: dropout on the features before the experts.
        initializer_range: std of the normal initialisation of the projections; centres and
            gate weights start at zero (equal gates, no shift).
    """

    def __init__(self, feature_dim: int, hidden_size: int, n_experts: int, dropout_prob: float, initializer_range: float):
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"MoEAdaptor: n_experts must be at least 1, found {n_experts}")
        self.n_experts = n_experts
        self.hidden_size = hidden_size
        self.dropout = nn.Dropout(dropout_prob)
        self.centres = nn.Parameter(torch.zeros(n_experts, feature_dim))
        self.projections = nn.Parameter(torch.empty(n_experts, feature_dim, hidden_size).normal_(0.0, initializer_range))
        self.gate = nn.Parameter(torch.zeros(feature_dim, n_experts))
        self.gate_noise = nn.Parameter(torch.zeros(feature_dim, n_experts))

    def gates(self, features: torch.Tensor) -> torch.Tensor:
        """(*, f) features -> (*, g) expert weights, non-negative and summing to one (noisy in training)."""
        logits = features @ self.gate
        if self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(features @ self.gate_noise)
        return torch.softmax(logits, dim=-1)

    def experts(self, features: torch.Tensor) -> torch.Tensor:
        """(*, f) features -> (*, g, d): every expert's whitened projection ``(x - b_k) W_k``."""
        features = self.dropout(features)
        f = features.shape[-1]
        projected = features @ self.projections.permute(1, 0, 2).reshape(f, -1)  # (*, g * d)
        shifts = torch.einsum("gf,gfd->gd", self.centres, self.projections)
        return projected.unflatten(-1, (self.n_experts, self.hidden_size)) - shifts

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(*, f) features -> (*, d) item vectors."""
        gates = self.gates(features)
        return (gates.unsqueeze(-2) @ self.experts(features)).squeeze(-2)
