"""RecBole's dataset classes as this package builds them: one named subclass of each.

Each ``Plugin<Name>`` (:func:`plugin_dataset_class` picks it) adds :class:`PluginDatasetMixin`
to RecBole's class, changing nothing in RecBole itself:

* the atomic files are checked as they are read, and a dataset without a training sample is
  refused (:mod:`recbole_mmm4rec.data.atomic_checks`): RecBole otherwise fills a blank timestamp
  with the mean, reads a row with extra fields shifted, turns floats beyond float32 into inf, and
  fails without naming the file on an empty one;
* a sequential dataset keeps its time field in float64 (:func:`exact_time_field`). RecBole
  stores FLOAT fields as float32, which rounds Unix timestamps to ~64 s, so sorting by time
  reorders interactions less than a minute apart: with exact times every sequential model,
  built-in or plugin, sees the same interaction order, hence the same split, and time-aware
  models see exact gaps.
"""
from __future__ import annotations

import numpy as np
import torch
from recbole.data.dataset import (
    DecisionTreeDataset,
    DIENDataset,
    Dataset,
    GRU4RecKGDataset,
    KGSeqDataset,
    KnowledgeBasedDataset,
    KSRDataset,
    SequentialDataset,
)
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

from recbole_mmm4rec.data import atomic_checks


def exact_time_field(dataset: Dataset) -> str | None:
    """The field kept in float64: a sequential dataset's time field, unless it is one of the
    ``numerical_features``, which models embed."""
    if isinstance(dataset, SequentialDataset) and dataset.time_field not in (dataset.config["numerical_features"] or []):
        return dataset.time_field
    return None


class PluginDatasetMixin:
    """Checks of the atomic files and exact time (see the module docstring) for a RecBole dataset
    class listed after it."""

    def _load_feat(self, filepath, source):
        atomic_checks.check_header_and_rows(filepath, self.config["field_separator"], self.config["encoding"])
        frame = super()._load_feat(filepath, source)
        if source == FeatureSource.INTERACTION:
            required = {"USER_ID_FIELD": self.uid_field, "ITEM_ID_FIELD": self.iid_field}
            if isinstance(self, SequentialDataset):  # sequences are ordered by time
                required["TIME_FIELD"] = self.time_field
            atomic_checks.check_interaction_columns(filepath, frame, required)
        if frame is not None:
            floats = [f for f in frame if self.field2type.get(f) in (FeatureType.FLOAT, FeatureType.FLOAT_SEQ)]
            exact_time = exact_time_field(self)
            atomic_checks.check_loaded_feature(
                filepath, frame, floats, [exact_time] if exact_time else [],
                self.time_field if source == FeatureSource.INTERACTION else None,
            )
        return frame

    def build(self):
        # Interactions per user before SequentialDataset.build turns them into samples.
        per_user = np.bincount(np.asarray(self.inter_feat[self.uid_field])) if self.uid_field else None
        splits = super().build()
        atomic_checks.check_training_samples(self.dataset_name, splits, per_user)
        return splits

    def _dataframe_to_interaction(self, data) -> Interaction:
        interaction = super()._dataframe_to_interaction(data)
        time_field = exact_time_field(self)
        if time_field is not None and time_field in data and self.field2type[time_field] == FeatureType.FLOAT:
            interaction.interaction[time_field] = torch.from_numpy(data[time_field].to_numpy(dtype=np.float64))
        return interaction


class PluginDataset(PluginDatasetMixin, Dataset):
    """RecBole's ``Dataset``: general, context-aware, traditional and decision-tree models."""


class PluginSequentialDataset(PluginDatasetMixin, SequentialDataset):
    """RecBole's ``SequentialDataset``: sequential models."""


class PluginKnowledgeBasedDataset(PluginDatasetMixin, KnowledgeBasedDataset):
    """RecBole's ``KnowledgeBasedDataset``: knowledge-aware models."""


class PluginKGSeqDataset(PluginDatasetMixin, KGSeqDataset):
    """RecBole's ``KGSeqDataset``."""


class PluginDecisionTreeDataset(PluginDatasetMixin, DecisionTreeDataset):
    """RecBole's ``DecisionTreeDataset``."""


class PluginGRU4RecKGDataset(PluginDatasetMixin, GRU4RecKGDataset):
    """RecBole's ``GRU4RecKGDataset``."""


class PluginKSRDataset(PluginDatasetMixin, KSRDataset):
    """RecBole's ``KSRDataset``."""


class PluginDIENDataset(PluginDatasetMixin, DIENDataset):
    """RecBole's ``DIENDataset``."""


_PLUGIN_DATASETS: dict[type, type] = {
    Dataset: PluginDataset,
    SequentialDataset: PluginSequentialDataset,
    KnowledgeBasedDataset: PluginKnowledgeBasedDataset,
    KGSeqDataset: PluginKGSeqDataset,
    DecisionTreeDataset: PluginDecisionTreeDataset,
    GRU4RecKGDataset: PluginGRU4RecKGDataset,
    KSRDataset: PluginKSRDataset,
    DIENDataset: PluginDIENDataset,
}


def plugin_dataset_class(dataset_class: type) -> type:
    """The plugin counterpart of one of RecBole's dataset classes; any other class (this
    package's, a user's) unchanged."""
    return _PLUGIN_DATASETS.get(dataset_class, dataset_class)
