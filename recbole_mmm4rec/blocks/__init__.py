"""Building blocks shared by this package's models."""
from recbole_mmm4rec.blocks.item_features import ItemFeatureTable

__all__ = ["ItemFeatureTable"]
