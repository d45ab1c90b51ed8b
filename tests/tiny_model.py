"""A deliberately small plugin model for testing the registry and the data plumbing."""
from __future__ import annotations

import os

from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_mmm4rec.blocks import ItemFeatureTable

CONFIG_FILE = os.path.join(os.path.dirname(__file__), "tiny_model.yaml")


class MeanFeatureRec(SequentialRecommender):
    """Test plugin: items are adapted text features, a user is the mean of its history."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.features = ItemFeatureTable.from_dataset(dataset, config["feature_modality"])
        self.adapter = nn.Linear(self.features.dim, self.hidden_size)
        self.loss_fct = nn.CrossEntropyLoss()

    def item_vectors(self, item_ids=None):
        return self.adapter(self.features(item_ids))

    def forward(self, item_seq, item_seq_len):
        valid = (item_seq > 0).unsqueeze(-1)
        summed = (self.item_vectors(item_seq) * valid).sum(dim=1)
        return summed / item_seq_len.clamp(min=1).unsqueeze(-1)

    def calculate_loss(self, interaction):
        user = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        logits = user @ self.item_vectors().T
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        user = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (user * self.item_vectors(interaction[self.ITEM_ID])).sum(dim=-1)

    def full_sort_predict(self, interaction):
        user = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return user @ self.item_vectors().T
