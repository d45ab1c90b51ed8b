"""Building blocks shared by this package's models."""
from recbole_mmm4rec.blocks.initialization import init_weights
from recbole_mmm4rec.blocks.item_features import ItemFeatureTable
from recbole_mmm4rec.blocks.layers import FFN_ACTIVATIONS, FeedForward, MMM4RecLayer, ModalityAdapter
from recbole_mmm4rec.blocks.losses import in_batch_cross_entropy, in_batch_item_cross_entropy
from recbole_mmm4rec.blocks.moe_adaptor import MoEAdaptor
from recbole_mmm4rec.blocks.ssd_block import TimeAwareSSD, ssd_dimensions
from recbole_mmm4rec.blocks.time_channel import (
    TIME_PATH_FORMS,
    FourierTimeFilter,
    TimeModulation,
    causal_rms_norm,
    time_gaps,
)

__all__ = [
    "FFN_ACTIVATIONS",
    "TIME_PATH_FORMS",
    "FeedForward",
    "FourierTimeFilter",
    "ItemFeatureTable",
    "MMM4RecLayer",
    "ModalityAdapter",
    "MoEAdaptor",
    "TimeAwareSSD",
    "TimeModulation",
    "causal_rms_norm",
    "in_batch_cross_entropy",
    "in_batch_item_cross_entropy",
    "init_weights",
    "ssd_dimensions",
    "time_gaps",
]
