"""ItemFeatureTable: a modality's frozen item features as a module, with the `learned` policy."""
from __future__ import annotations

import torch
from torch import nn


class ItemFeatureTable(nn.Module):
    """Frozen per-item features of one modality, looked up by item id.

    The table is a non-persistent buffer: checkpoints never carry it (it is rebuilt from the
    dataset, and a fine-tuned model must not inherit another domain's items). With the
    ``learned`` missing-feature policy, items without a feature row share one trained vector.

    Args:
        table: ``(item_num, dim)`` float features; row 0 is padding.
        has_feature: ``(item_num,)`` bool, True where the item has its own row.
        policy: the dataset's missing-feature policy for this modality.
    """

    def __init__(self, table: torch.Tensor, has_feature: torch.Tensor, policy: str):
        super().__init__()
        self.register_buffer("table", table.float(), persistent=False)
        self.register_buffer("has_feature", has_feature.bool(), persistent=False)
        self.missing_embedding = (
            nn.Parameter(torch.zeros(table.shape[1])) if policy == "learned" else None
        )

    @classmethod
    def from_dataset(cls, dataset, modality: str) -> "ItemFeatureTable":
        return cls(
            dataset.item_feature_table(modality),
            dataset.item_feature_mask(modality),
            dataset.missing_feature_policy(modality),
        )

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    @property
    def num_items(self) -> int:
        """Rows of the table: the catalogue's items including padding 0."""
        return self.table.shape[0]

    def forward(self, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Features of ``item_ids`` (any shape ``(*)`` -> ``(*, dim)``), or of all items if None."""
        table = self.table
        if self.missing_embedding is not None:
            missing = (~self.has_feature).unsqueeze(-1)
            missing[0] = False  # padding stays zero
            table = torch.where(missing, self.missing_embedding.to(table.dtype), table)
        return table if item_ids is None else table[item_ids]
