"""Kernels: pure functions over tensors, each with a reference implementation beside it."""
from recbole_mmm4rec.kernels.ssd import segment_sum, ssd_quadratic, ssd_scan, ssd_sequential

__all__ = ["segment_sum", "ssd_quadratic", "ssd_scan", "ssd_sequential"]
