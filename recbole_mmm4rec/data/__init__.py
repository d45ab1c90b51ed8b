"""The multimodal dataset class and the item feature file format."""
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

__all__ = [
    "MISSING_FEATURE_POLICIES",
    "FeatureFileError",
    "MultiModalSequentialDataset",
    "align_item_features",
    "atomic_replace",
    "atomic_write",
    "read_item_features",
    "tokens_path_for",
    "write_item_feature_blocks",
    "write_item_features",
]
