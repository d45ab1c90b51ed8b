"""The dataset classes (the multimodal one, RecBole's as this package builds them) and the item
feature file format."""
from recbole_mmm4rec.data.dataset import MultiModalSequentialDataset
from recbole_mmm4rec.data.features import (
    MISSING_FEATURE_POLICIES,
    FeatureFileError,
    align_item_features,
    atomic_replace,
    atomic_write,
    read_item_features,
    tokens_path_for,
    write_item_feature_blocks,
    write_item_features,
)
from recbole_mmm4rec.data.recbole_datasets import PluginDatasetMixin, PluginSequentialDataset, plugin_dataset_class

__all__ = [
    "MISSING_FEATURE_POLICIES",
    "FeatureFileError",
    "MultiModalSequentialDataset",
    "PluginDatasetMixin",
    "PluginSequentialDataset",
    "align_item_features",
    "atomic_replace",
    "atomic_write",
    "plugin_dataset_class",
    "read_item_features",
    "tokens_path_for",
    "write_item_feature_blocks",
    "write_item_features",
]
