"""The software and hardware a run ran on: Python, torch, CUDA, the device's name and key package versions.

Logged on every training run (``environment.json`` and ``env.*`` tags, see ``jobs.py``), so a number
can be traced to the machine and library versions that produced it.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

# Distributions whose version can change a result or its speed (torch itself is read from the module).
PACKAGES = ("torchvision", "numpy", "mlflow", "torch-fidelity", "optuna", "pydantic", "scipy")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def device_name(device) -> str:
    """What the device is: the GPU's model name, or the CPU's (``platform`` often leaves it empty)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    try:  # Linux: the model name of the first core
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    return model or platform.processor() or platform.machine()


def environment(device) -> dict[str, str]:
    """The record for ``device`` (a ``torch.device``): flat string values, so each can be a tag."""
    import torch

    record = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none",
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": str(torch.get_num_threads()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record["device_memory_gib"] = f"{props.total_memory / 2**30:.1f}"
        record["device_capability"] = f"{props.major}.{props.minor}"
    record.update({dist: _version(dist) for dist in PACKAGES})
    record["executable"] = sys.executable
    return record
