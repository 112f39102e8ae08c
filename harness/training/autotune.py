"""``precision: auto`` and ``memory_format: auto``, decided by measuring, not by asking the hardware.

Whether bf16 autocast or the channels_last layout speeds up training depends on the model, the batch, the
kernels and the machine: on one 2-core EPYC with AVX512-BF16 bf16 trains this UNet 1.7x faster than fp32, on a
Xeon with the same flag 0.8x (issue 18). So each candidate (fp32 | bf16) x (contiguous | channels_last) trains
the real model on a random batch of the real shape for a few steps, on the device and with the threads the run
will have, and the fastest wins, with margins so that noise does not flip the choice:

- channels_last only when it is at least ``LAYOUT_MARGIN`` faster than contiguous at the same precision;
- bf16 only when it is at least ``BF16_MARGIN`` faster than the best fp32 (it also changes the numerics).

The chosen candidate is therefore never more than ``BF16_MARGIN`` slower than the fastest measured one.
The result is cached per (host, device, threads, torch, model, input shape, batch, process) in a JSON file, so
a machine measures each model once. ``resolve`` writes the choice into the config *before* it is hashed: the
hash names the precision and layout that ran (explicit fp32 and auto-resolved fp32 are one model), and the
training loop refuses a config that still says ``auto`` (``train.check_resolved``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from ..config import IMAGE_CHANNELS, IMAGE_SIZES, NUM_CLASSES, Config
from ..device import autocast, host_identity, native_bf16, resolve_precision
from ..diffusion.processes import PROCESSES
from ..diffusion.schedules import make_schedule
from .train import build_model

BF16_MARGIN = 0.05
LAYOUT_MARGIN = 0.02
PRECISIONS = ("fp32", "bf16")
LAYOUTS = ("contiguous", "channels_last")
OFF = "HARNESS_AUTOTUNE"  # =off: auto becomes fp32, contiguous unmeasured (the test suite: same choice everywhere)
PROBE_VERSION = 1  # bump when the probe measures differently: older cached choices are then measured again

Candidate = tuple[str, str]  # (precision, memory_format)
Probe = Callable[[Config, torch.device, list[Candidate]], dict[str, float]]  # seconds per step, by name


def name(c: Candidate) -> str:
    """``fp32``, ``bf16+channels_last``, ...: the names ``harness bench`` reports its variants under."""
    return c[0] if c[1] == "contiguous" else f"{c[0]}+{c[1]}"


def candidates(config: Config, device: torch.device) -> list[Candidate]:
    """What ``auto`` may become: a field set explicitly stays as it is; bf16 only where it is native."""
    tc = config.train
    precisions = (
        [tc.precision] if tc.precision != "auto" else [p for p in PRECISIONS if p == "fp32" or native_bf16(device)]
    )
    layouts = [tc.memory_format] if tc.memory_format != "auto" else list(LAYOUTS)
    return [(p, m) for p in precisions for m in layouts]


def choose(seconds: dict[str, float], options: list[Candidate]) -> Candidate:
    """The candidate ``auto`` resolves to, from measured seconds per step (lower is faster)."""

    def best_layout(precision: str) -> Candidate:
        mine = [c for c in options if c[0] == precision]
        plain = next((c for c in mine if c[1] == "contiguous"), mine[0])
        fast = min(mine, key=lambda c: seconds[name(c)])
        return fast if seconds[name(fast)] <= (1 - LAYOUT_MARGIN) * seconds[name(plain)] else plain

    per_precision = [best_layout(p) for p in dict.fromkeys(c[0] for c in options)]
    base = next((c for c in per_precision if c[0] == "fp32"), per_precision[0])
    fast = min(per_precision, key=lambda c: seconds[name(c)])
    return fast if seconds[name(fast)] <= (1 - BF16_MARGIN) * seconds[name(base)] else base


def probe(config: Config, device: torch.device, options: list[Candidate], rounds: int = 2) -> dict[str, float]:
    """Seconds per training step of each candidate: the real network, optimizer and loss on a random batch.

    Rounds alternate the order and the fastest round counts, so a burst of background load hits one
    measurement of a candidate, not its result. Each candidate gets its warm-up steps (oneDNN and cuDNN pick
    their kernels on first use) before ``steps`` timed ones.
    """
    warmup, steps = (5, 10) if device.type == "cuda" else (2, 3)
    tc, dc = config.train, config.diffusion
    B, shape, dataset = tc.batch_size, config.network_input(), config.data.dataset
    schedule = make_schedule(dc.schedule, dc.timesteps, zero_terminal_snr=dc.zero_terminal_snr).to(device)
    loss_fn = PROCESSES[dc.process].training_loss(dc, schedule)  # as train() steps
    num_classes = NUM_CLASSES[dataset]
    best: dict[str, float] = {}
    for r in range(rounds):
        for c in options if r % 2 == 0 else options[::-1]:
            torch.manual_seed(0)
            fmt = torch.channels_last if c[1] == "channels_last" else torch.contiguous_format
            model = build_model(config, IMAGE_CHANNELS[dataset], IMAGE_SIZES[dataset], num_classes)
            model = model.to(device).to(memory_format=fmt).train()
            opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, fused=True)
            x0 = torch.randn(B, *shape, device=device).contiguous(memory_format=fmt)
            y = torch.randint(0, num_classes + 1, (B,), device=device) if config.model.conditional else None
            gen = torch.Generator(device=device).manual_seed(0)
            for i in range(warmup + steps):
                if i == warmup:
                    _sync(device)
                    start = time.perf_counter()
                with autocast(device, resolve_precision(c[0])):
                    loss = loss_fn(model, x0, y, gen)[0].mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            _sync(device)
            seconds = (time.perf_counter() - start) / steps
            best[name(c)] = min(best.get(name(c), seconds), seconds)
    return best


def probe_key(config: Config, device: torch.device, options: list[Candidate]) -> dict[str, Any]:
    """Everything a probe's result depends on; its hash names the cache entry."""
    return {
        "version": PROBE_VERSION,
        "host": host_identity(device),
        "device": device.type,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "torch": torch.__version__,
        "backbone": config.model.backbone,
        "model": config.model.identity(),
        "input": list(config.network_input()),
        "batch_size": config.train.batch_size,
        "process": config.diffusion.process,
        "candidates": [name(c) for c in options],
    }


def resolve(
    config: Config, device: torch.device, cache_dir: str | Path | None, *, measure: Probe | None = None
) -> tuple[Config, dict[str, Any] | None]:
    """``config`` with its ``auto`` fields replaced by what is fastest here, and the measurement behind it
    (None when nothing was ``auto``). ``cache_dir`` None measures without caching (the bench)."""
    if not config.train.unresolved():
        return config, None
    options = candidates(config, device)
    if os.environ.get(OFF) == "off":
        options = [next((c for c in options if c[0] == "fp32"), options[0])]
        options = [next((c for c in options if c[1] == "contiguous"), options[0])]
    if len(options) == 1:
        record = {"seconds": {}, "choice": name(options[0]), "measured": False}
    else:
        key = probe_key(config, device, options)
        record = _cached(key, cache_dir, lambda: (measure or probe)(config, device, options))
    chosen = next(c for c in options if name(c) == record["choice"])
    train = config.train.model_copy(update={"precision": chosen[0], "memory_format": chosen[1]})
    return config.model_copy(update={"train": train}), record


def step_seconds(config: Config, device: torch.device, cache_dir: str | Path | None) -> float | None:
    """Seconds per training step of a resolved ``config`` (its own precision and layout) on ``device``, probed
    and cached as ``resolve``'s choices are: the dry run's estimate before any run (orchestration/budget.py).
    None under ``HARNESS_AUTOTUNE=off``, which promises that nothing is probed."""
    if os.environ.get(OFF) == "off":
        return None
    chosen = (config.train.precision, config.train.memory_format)
    record = _cached(probe_key(config, device, [chosen]), cache_dir, lambda: probe(config, device, [chosen], 1))
    return record["seconds"][name(chosen)]


def _cached(key: dict[str, Any], cache_dir: str | Path | None, measure: Callable[[], dict[str, float]]) -> dict:
    """The cached record for ``key``, measured once under a file lock (two workers never probe one model twice
    at once: they would also slow each other's measurement)."""

    def record() -> dict[str, Any]:
        options = [tuple(c.split("+")) if "+" in c else (c, "contiguous") for c in key["candidates"]]
        seconds = measure()
        return {"key": key, "seconds": seconds, "choice": name(choose(seconds, options)), "measured": True}

    if cache_dir is None:
        return record()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{digest}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                return {**json.loads(path.read_text()), "cached": True}
            except (OSError, json.JSONDecodeError):
                pass  # a damaged entry is measured again
        out = record()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1, sort_keys=True))
        tmp.replace(path)
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
