"""The weight initialisation of RecBole's SASRec, shared by this package's models."""
from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, ``std``) linear and embedding weights, zero biases, unit LayerNorms.

    Use as ``model.apply(functools.partial(init_weights, std=...))``.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
