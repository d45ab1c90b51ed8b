"""Kernels: pure functions over tensors, each with a reference implementation beside it."""
from recbole_mmm4rec.kernels.conv import causal_conv1d, causal_conv1d_reference
from recbole_mmm4rec.kernels.norm import gated_rms_norm
from recbole_mmm4rec.kernels.ssd import segment_sum, ssd_quadratic, ssd_scan, ssd_sequential

__all__ = [
    "causal_conv1d",
    "causal_conv1d_reference",
    "gated_rms_norm",
    "segment_sum",
    "ssd_quadratic",
    "ssd_scan",
    "ssd_sequential",
]
