"""A job's memory before it runs, against what the device has: refused in one line, before anything is written.

The estimate adds what a training process holds at its peak: the fp32 weights with their gradients, AdamW's two
moments and the EMA copy (five copies of the parameters), the data set as float32 tensors (training/data.py keeps
the whole set in memory, on the device), the activations autograd saves for one training batch, the sampling
buffers of an evaluation (x_T, the samples, one forward pass at the evaluation batch) and, in RAM, the Python
process itself. The activations are not guessed from a formula per backbone: the network is built and run on
PyTorch's ``meta`` device, which computes every shape and allocates nothing, and the tensors autograd saves for
backward (``saved_tensors_hooks``) are added up, each storage once. Two factors, measured on this harness's models
(docs in the report of issue 29; tests/test_memory.py checks the estimate against a measured peak), turn the saved
tensors into a peak: backward's working set adds about 15% to them, and a no-grad forward pass peaks near a
quarter of what a training forward saves at the same batch (only a few layers are alive at once, and the UNet's
skips).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..config import DATASET_SIZES, IMAGE_CHANNELS, IMAGE_SIZES, NUM_CLASSES, Config, ConfigError

GB = 1e9
FP32 = 4
WEIGHT_COPIES = 5  # weights, gradients, AdamW's m and v, the EMA: each one fp32 number per parameter
# A training step's peak / the bytes its forward saves: 0.86-1.34 measured with 1 torch thread, 1.35 with 2
# (each thread's scratch buffers), so 1.5: an estimate may refuse early, never late.
BACKWARD_PEAK = 1.5
SAMPLING_PEAK = 0.3  # a no-grad forward's peak / a training forward's saved bytes at that batch: 0.10-0.27 measured
# The process without the job: Python, torch, torchvision, mlflow, torch-fidelity, the harness (about 0.75 GB of
# RSS measured after importing the training loop, more once the evaluation and tracking modules load).
RUNTIME = 1.0 * GB


class DoesNotFit(ConfigError):
    """A plan or config whose estimate exceeds the device's memory: one line, exit 2, like any bad input."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one job needs at its peak, by what holds them; ``fields`` are in the order the line names them."""

    weights: int  # WEIGHT_COPIES x parameters x 4 bytes
    activations: int  # one training batch, backward included
    data: int  # the training set as float32 (N, C, H, W) and its uint8 source while loading
    sampling: int  # x_T and the samples of one evaluation, one forward pass at eval.batch_size
    runtime: int  # the process itself (RAM only: not on a GPU)

    # The field a user lowers when a part is too large: the refusal names the largest part's.
    FIELDS = {
        "weights": "model.channels / model.hidden",
        "activations": "train.batch_size",
        "data": "data.dataset",
        "sampling": "eval.batch_size",
        "runtime": "train.device",
    }

    def on(self, device: torch.device) -> int:
        """The bytes on ``device``: a GPU holds everything but the process itself."""
        return sum(getattr(self, f.name) for f in fields(self) if device.type == "cpu" or f.name != "runtime")

    def text(self, device: torch.device) -> str:
        """``2.31 GB (weights 0.01, activations of one batch 1.20, data set 0.02, sampling 0.08, runtime 1.00)``"""
        names = {"activations": "activations of one batch", "data": "data set"}
        parts = [f"{names.get(f.name, f.name)} {getattr(self, f.name) / GB:.2f}" for f in fields(self)]
        parts = parts if device.type == "cpu" else parts[:-1]
        return f"{self.on(device) / GB:.2f} GB ({', '.join(parts)})"

    def largest(self, device: torch.device) -> str:
        """The field to lower: that of the largest part on ``device``."""
        parts = [f.name for f in fields(self) if device.type == "cpu" or f.name != "runtime"]
        return self.FIELDS[max(parts, key=lambda name: getattr(self, name))]


def estimate(config: Config) -> MemoryEstimate:
    """The peak memory of training and evaluating ``config`` (module docstring)."""
    tc, ec = config.train, config.eval
    c, h, w = config.network_input()
    params, saved_train = _meta_forward(config, tc.batch_size)
    # A guided step runs the conditional and the unconditional rows in one batch (guidance.py): twice the rows.
    rows = ec.batch_size * (2 if any(s.guidance > 0 for s in ec.samplers) else 1)
    saved_eval = saved_train if rows == tc.batch_size else _meta_forward(config, rows)[1]
    dataset = config.data.dataset
    pixels = DATASET_SIZES[dataset] * IMAGE_CHANNELS[dataset] * IMAGE_SIZES[dataset] ** 2
    image = IMAGE_CHANNELS[dataset] * IMAGE_SIZES[dataset] ** 2
    return MemoryEstimate(
        weights=WEIGHT_COPIES * FP32 * params,
        activations=int(BACKWARD_PEAK * saved_train),
        data=pixels * (FP32 + 1) + (DATASET_SIZES[dataset] * FP32 * c * h * w if config.data.space == "latent" else 0),
        sampling=ec.num_samples * FP32 * (c * h * w + image) + int(SAMPLING_PEAK * saved_eval),
        runtime=int(RUNTIME),
    )


def _meta_forward(config: Config, rows: int) -> tuple[int, int]:
    """(parameters, bytes autograd saves) of one forward pass of ``config``'s network on ``rows`` inputs, computed
    on the meta device: shapes only, nothing allocated, so a batch that could never fit costs nothing to measure."""
    return _meta_forward_of(config.model, config.data, config.autoencoder, rows)


@functools.lru_cache(maxsize=64)  # a plan's arms share a few networks; the sections are frozen, so hashable
def _meta_forward_of(model, data, autoencoder, rows: int) -> tuple[int, int]:
    from ..training.train import build_model

    config = Config(model=model, data=data, autoencoder=autoencoder)
    with torch.device("meta"):
        net = build_model(config, IMAGE_CHANNELS[data.dataset], IMAGE_SIZES[data.dataset], NUM_CLASSES[data.dataset])
    weights = {p.untyped_storage()._cdata for p in net.parameters()}
    saved: dict[int, int] = {}  # storage -> bytes: a tensor saved by two operations (or a view of it) counts once

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s._cdata not in weights:
            saved[s._cdata] = s.nbytes()
        return t

    # On meta, attention takes SDPA's math path, which saves every head's (L, L) matrix, where the CPU and CUDA
    # kernels save q, k, v and the output: an over-estimate (2-3 x the activations of attention-heavy networks).
    with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = torch.zeros(rows, dtype=torch.long) if model.conditional else None
        net(torch.zeros(rows, *config.network_input()), torch.zeros(rows, dtype=torch.long), y)  # (B, C, H, W), (B,)
    return sum(p.numel() for p in net.parameters()), sum(saved.values())


def available(device: torch.device) -> tuple[int, str]:
    """Bytes this process may still allocate on ``device``, and where the number comes from."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device} ({torch.cuda.get_device_name(device)})"
    import psutil

    free, where = psutil.virtual_memory().available, "of RAM available"
    limit = _cgroup_room()
    if limit is not None and limit < free:
        free, where = limit, "left under this container's memory limit (cgroup memory.max)"
    return free, where


def _cgroup_room() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), or None where there is no limit."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def check(configs: list[tuple[str, Config]], device: torch.device, at_once: int) -> list[str]:
    """Refuse (``DoesNotFit``) when the ``at_once`` largest jobs of ``configs`` (name, config) do not fit ``device``
    together; else the lines that say what they need. Runs before the autotune probe allocates the first batch."""
    if not configs:
        return []
    sized = sorted(((estimate(c), name) for name, c in configs), key=lambda e: -e[0].on(device))
    together = min(at_once, len(sized))
    need = sum(e.on(device) for e, _ in sized[:together])
    have, where = available(device)
    big, name = sized[0]
    if need > have:
        jobs = f"; {together} jobs at a time need {need / GB:.2f} GB" if together > 1 else ""
        raise DoesNotFit(
            f"{name}: needs about {big.text(device)}{jobs}, but {device.type} has {have / GB:.2f} GB {where}; "
            f"lower {big.largest(device)}" + (" or run fewer jobs at a time (cpu_jobs, jobs_per_gpu)" if jobs else "")
        )
    return [f"memory: about {big.text(device)} per job at most, {together} at a time, of {have / GB:.2f} GB {where}"]
