"""The one place that chooses the kernels: mamba-ssm / causal-conv1d on CUDA, else pure PyTorch.

Both sets take the same arguments (mamba-ssm's), so a model calls ``kernels.ssd_scan(...)``
without knowing which one runs:

* ``torch``: :func:`~recbole_mmm4rec.kernels.ssd_scan`, :func:`causal_conv1d` and
  :func:`gated_rms_norm` of this package; any device.
* ``cuda``: mamba-ssm's ``mamba_chunk_scan_combined`` and Triton gated RMSNorm, and
  causal-conv1d's ``causal_conv1d_fn`` (``pip install recbole-mmm4rec[cuda]``); CUDA tensors only.
  A convolution of more than 4 taps, which causal-conv1d does not implement, runs in torch.
* ``auto`` (the default): ``cuda`` for CUDA tensors when both packages import, else ``torch``.
  On a CPU tensor the CUDA packages are never imported.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from recbole_mmm4rec.kernels.conv import causal_conv1d
from recbole_mmm4rec.kernels.norm import gated_rms_norm
from recbole_mmm4rec.kernels.ssd import ssd_scan

BACKENDS = ("auto", "torch", "cuda")
CUDA_CONV_WIDTHS = (2, 4)  # the kernel widths causal-conv1d implements
CUDA_INSTALL_HINT = "pip install 'recbole-mmm4rec[cuda]' (mamba-ssm and causal-conv1d) on a CUDA machine"


@dataclass(frozen=True)
class Kernels:
    """A consistent set of kernels, all with the signatures of this package's torch functions."""

    name: str
    ssd_scan: Callable[..., torch.Tensor]
    causal_conv1d: Callable[..., torch.Tensor]
    gated_rms_norm: Callable[..., torch.Tensor]


TORCH_KERNELS = Kernels("torch", ssd_scan, causal_conv1d, gated_rms_norm)


@functools.lru_cache(maxsize=None)
def cuda_kernels() -> Kernels:
    """mamba-ssm's and causal-conv1d's kernels behind the torch functions' signatures.

    Raises ImportError, saying what to install, when either package does not import.
    """
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError as error:
        raise ImportError(f"the CUDA kernels need mamba-ssm and causal-conv1d ({error}); {CUDA_INSTALL_HINT}") from error

    def gated_rms_norm_cuda(x, weight, z=None, eps=1e-6, group_size=None):
        return rmsnorm_fn(x, weight, None, z=z, eps=eps, group_size=group_size, norm_before_gate=False)

    def causal_conv1d_cuda(x, weight, bias=None, activation=None):
        if not CUDA_CONV_WIDTHS[0] <= weight.shape[1] <= CUDA_CONV_WIDTHS[1]:
            return causal_conv1d(x, weight, bias, activation)  # causal-conv1d takes 2 to 4 taps only
        if not _fits_channels_last_kernel(x):
            x = x.contiguous()  # the (b, d, l) layout it takes for any stride
        return causal_conv1d_fn(x, weight, bias, activation=activation)

    return Kernels("cuda", mamba_chunk_scan_combined, causal_conv1d_cuda, gated_rms_norm_cuda)


def _fits_channels_last_kernel(x: torch.Tensor) -> bool:
    """causal-conv1d reads a channels-last x (stride 1 over channels) only when its channel count
    and its batch and position strides are multiples of 8; a (b, d, l) x with stride 1 over
    positions it always reads."""
    if x.stride(2) == 1:
        return True
    return x.stride(1) == 1 and all(v % 8 == 0 for v in (x.shape[1], x.stride(0), x.stride(2)))


@functools.lru_cache(maxsize=None)
def _cuda_kernels_or_none() -> Kernels | None:
    try:
        return cuda_kernels()
    except ImportError as error:
        logging.getLogger(__name__).warning(f"kernel_backend auto: using the torch kernels on CUDA ({error})")
        return None


def check_backend(backend: str) -> None:
    """A ValueError naming the config key unless ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"kernel_backend must be one of {list(BACKENDS)}, found {backend!r}")


def select_kernels(backend: str, device: torch.device) -> Kernels:
    """The kernels for tensors on ``device`` under the config key ``kernel_backend``."""
    check_backend(backend)
    on_cuda = torch.device(device).type == "cuda"
    if backend == "torch" or (backend == "auto" and not on_cuda):
        return TORCH_KERNELS
    if backend == "auto":
        return _cuda_kernels_or_none() or TORCH_KERNELS
    if not on_cuda:
        raise ValueError(
            f"kernel_backend: cuda runs on CUDA tensors only, and the model is on {device}; "
            f"set use_gpu: True on a CUDA machine, or kernel_backend: auto / torch"
        )
    return cuda_kernels()
