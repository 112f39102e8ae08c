"""Where and in which precision a model runs: one place for training and evaluation alike.

Both the training loop and the evaluator sample with the network, so both ask here; keeping this out of
``training`` lets ``evaluation`` use it without importing the training loop (and the other way round).
"""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32.

    ``auto`` is bf16 where the hardware computes it natively: CUDA devices with bf16 support, and CPUs
    with AVX512-BF16 or AMX (oneDNN's check). Elsewhere bf16 is emulated and slower than fp32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the network's forward pass; a no-op for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
