"""Where and in which precision a model runs: one place for training and evaluation alike.

Both the training loop and the evaluator sample with the network, so both ask here; keeping this out of
``training`` lets ``evaluation`` use it without importing the training loop (and the other way round).
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

from .config import ConfigError

# The CPU flags that decide which precisions and kernels oneDNN can use: part of a host's identity, so a probe's
# result cached on one kind of machine is never read on another (tests/test_autotune.py).
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "asimd", "sve")


def resolve_device(name: str, field: str = "train.device") -> torch.device:
    """The device ``name`` (a validated ``train.device``) on this machine; one that does not exist here (``cuda:7``
    with one GPU or none, ``mps`` off a Mac) is a one-line ``ConfigError`` naming ``field``, before anything runs."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # HARNESS_DEVICE is not validated with the config
        raise ConfigError(f"{field}: unknown device {name!r}; valid: auto, cpu, cuda, cuda:N, mps") from None
    if missing := _missing(device):
        raise ConfigError(f"{field}: {name!r} {missing}")
    return device


def _missing(device: torch.device) -> str | None:
    """Why ``device`` does not exist on this machine, or None."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            return f"but torch sees no CUDA GPU here (torch {torch.__version__}, {build}); use cpu or auto"
        if (device.index or 0) >= count:
            return f"but this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "but Apple's MPS is not available here; use cpu or auto"
    if device.type == "cpu" and device.index not in (None, 0):
        return "but there is one cpu device, cpu or cpu:0"
    return None


def resolve_precision(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved ``train.precision``, or None for fp32.

    ``auto`` is resolved by measurement before a run (training/autotune.py); a config still holding it is a
    run's from before that existed, whose precision was not recorded: it samples in fp32, never wrong, at worst slower.
    """
    return torch.bfloat16 if precision == "bf16" else None


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 can be fast here: a CUDA device with bf16 support, or a CPU with AVX512-BF16 or AMX (oneDNN).

    Necessary, not sufficient (issue 18: a Xeon with AVX512-BF16 trains this UNet slower in bf16): the probe
    measures; this only spares it candidates that are emulated and several times slower.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_identity() -> tuple[str, list[str]]:
    """The CPU's model name and those of its flags in ``KERNEL_FLAGS`` (Linux's /proc/cpuinfo; elsewhere the
    platform's processor string and no flags)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)  # the first CPU's values win last
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name = fields.get("model name") or fields.get("Model") or fields.get("CPU part") or platform.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return name, [f for f in KERNEL_FLAGS if f in flags]


def host_identity(device: torch.device) -> str:
    """What a measured speed belongs to: the GPU's name, or the CPU's model name and its kernel flags."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name, flags = cpu_identity()
    return f"{name} [{' '.join(flags)}]"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the network's forward pass; a no-op for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
