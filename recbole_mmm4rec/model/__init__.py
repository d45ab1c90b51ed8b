"""This package's models, one class per file, and the checkpoint transfer rule."""
from recbole_mmm4rec.model.mmm4rec import MMM4Rec
from recbole_mmm4rec.model.pop import Pop
from recbole_mmm4rec.model.transfer import (
    TransferError,
    TransferReport,
    freeze_parameters,
    is_item_specific,
    load_transferable,
)
from recbole_mmm4rec.model.unisrec import UniSRec

__all__ = [
    "MMM4Rec",
    "Pop",
    "TransferError",
    "TransferReport",
    "UniSRec",
    "freeze_parameters",
    "is_item_specific",
    "load_transferable",
]
