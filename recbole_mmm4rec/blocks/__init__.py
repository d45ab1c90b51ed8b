"""Building blocks shared by this package's models."""
from recbole_mmm4rec.blocks.item_features import ItemFeatureTable
from recbole_mmm4rec.blocks.layers import CoTiSSDLayer, FeedForward, ModalityAdapter, TiSSDLayer
from recbole_mmm4rec.blocks.ssd_block import TimeAwareSSD, ssd_dimensions
from recbole_mmm4rec.blocks.time_channel import FourierTimeFilter, TimeModulation, time_gaps

__all__ = [
    "CoTiSSDLayer",
    "FeedForward",
    "FourierTimeFilter",
    "ItemFeatureTable",
    "ModalityAdapter",
    "TiSSDLayer",
    "TimeAwareSSD",
    "TimeModulation",
    "ssd_dimensions",
    "time_gaps",
]
