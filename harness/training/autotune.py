"""``precision: auto`` and ``memory_format: auto``, decided by measuring, not by asking the hardware.

Whether bf16 autocast or the channels_last layout speeds up training depends on the model, the batch, the
kernels and the machine: on one 2-core EPYC with AVX512-BF16 bf16 trains this UNet 1.7x faster than fp32, on a
Xeon with the same flag 0.8x (issue 18). So each candidate (fp32 | bf16) x (contiguous | channels_last) trains
the real model on a random batch of the real shape, on the device and with the threads the run will have, and
the fastest wins, with margins so that noise does not flip the choice:

- channels_last only when it is at least ``LAYOUT_MARGIN`` faster than contiguous at the same precision;
- bf16 only when it is at least ``BF16_MARGIN`` faster than the best fp32 (it also changes the numerics).

The chosen candidate is therefore never more than ``BF16_MARGIN`` slower than the fastest measured one.
A machine shared with other work changes speed while it is probed (issue 30: a probe during a neighbour's
first minutes chose a variant at 72% of the best, and the cache kept that choice for every later run), so the
candidates are timed in short interleaved rounds, each figure is a median, and rounds that disagree by more
than the margin that decides earn more rounds; a probe whose rounds never agree decides for its plan only
and is not cached (``measure_rounds``). The result is cached per (host, device, threads, torch, model, input
shape, batch, process) in a JSON file, so a machine measures each model once, and checked against reality:
a run whose steps take far longer or shorter than the probe predicted marks its entry stale (``check_run``),
and the next plan measures again. ``resolve`` writes the choice into the config *before* it is hashed: the
hash names the precision and layout that ran (explicit fp32 and auto-resolved fp32 are one model), and the
training loop refuses a config that still says ``auto`` (``train.check_resolved``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median
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
PROBE_VERSION = 2  # bump when the probe measures differently: older cached choices are then measured again
ROUNDS = 5  # the rounds that decide: the last ROUNDS of up to MAX_ROUNDS, while they disagree
MAX_ROUNDS = 12
PLAN_ONLY = ("remeasured", "kept")  # said by the plan that measured again, never read back from the cache
STALE_RATIO = 1.25  # a run stepping this much slower or faster than its probe predicted marks the entry stale
MIN_INTERVALS = 3  # log intervals a run needs before its speed is held against the probe's

Candidate = tuple[str, str]  # (precision, memory_format)
Probe = Callable[[Config, torch.device, list[Candidate]], "Measured | dict[str, float]"]


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


@dataclass(frozen=True)
class Measured:
    """What a probe found: median seconds per step by candidate name, and whether its rounds agree.

    ``spread``: how far the deciding rounds stray from the median, as the largest |q_r - median q| of the ratio
    q_r = t_choice / t_rival within each round (rival: the fastest other candidate); ``margin``: the margin that
    decides, max(|1 - median q|, ``BF16_MARGIN``). Rounds that stray by more than the margin could have decided
    otherwise: the choice is then made for this run only and never cached."""

    seconds: dict[str, float]
    rounds: int = 1
    spread: float = 0.0
    margin: float = BF16_MARGIN

    @property
    def settled(self) -> bool:
        return self.spread <= self.margin


def measure_rounds(
    step: dict[str, Callable[[], None]],
    options: list[Candidate],
    clock: Callable[[], float] = time.perf_counter,
    *,
    steps: int = 2,
    rounds: int = ROUNDS,
    max_rounds: int = MAX_ROUNDS,
) -> Measured:
    """Time ``step[name]()`` (one training step of a candidate, synchronized) in interleaved rounds.

    Rounds run the candidates in mirrored order (A B C D, D C B A, ...), ``steps`` timed steps each, so a
    load that changes slowly costs every candidate alike and a ratio taken within a round cancels it. Each
    candidate's figure is its median over the deciding rounds: a spike that slows one candidate in one round
    moves neither the median nor the choice. The deciding rounds are the last ``rounds``; while they stray
    by more than the margin that decides, another round is measured (up to ``max_rounds``), so a load that
    stops during the probe ends up outside the window. Still unsettled: the medians over all rounds decide,
    and ``Measured.settled`` says not to cache them."""
    names = [name(c) for c in options]
    per_round: dict[str, list[float]] = {n: [] for n in names}
    while True:
        r = len(per_round[names[0]])
        for n in names if r % 2 == 0 else names[::-1]:
            start = clock()
            for _ in range(steps):
                step[n]()
            per_round[n].append((clock() - start) / steps)
        found = agreement({n: ts[-rounds:] for n, ts in per_round.items()}, options)
        if (found.settled and r + 1 >= rounds) or r + 1 >= max_rounds:
            break
    if not found.settled:  # no window agreed: every round counts, for this run only
        found = agreement(per_round, options)
    return Measured(found.seconds, len(per_round[names[0]]), found.spread, found.margin)


def agreement(per_round: dict[str, list[float]], options: list[Candidate]) -> Measured:
    """Medians of ``per_round`` and how far its rounds stray from them on the pair that decides."""
    seconds = {n: median(ts) for n, ts in per_round.items()}
    if len(options) < 2:
        return Measured(seconds, len(next(iter(per_round.values()))))
    chosen = name(choose(seconds, options))
    rival = min((n for n in seconds if n != chosen), key=seconds.get)
    q = [a / b for a, b in zip(per_round[chosen], per_round[rival])]  # (rounds,), both timed in one round
    q_med = median(q)
    spread = max(abs(x - q_med) for x in q)
    return Measured(seconds, len(q), spread, max(abs(1 - q_med), BF16_MARGIN))


def probe(config: Config, device: torch.device, options: list[Candidate], rounds: int = ROUNDS) -> Measured:
    """Seconds per training step of each candidate: the real network, optimizer and loss on a random batch,
    timed in interleaved rounds (``measure_rounds``). Each candidate gets its own model and its warm-up steps
    (oneDNN and cuDNN pick their kernels on first use) before the first round."""
    warmup, steps = (5, 5) if device.type == "cuda" else (2, 2)
    tc, dc = config.train, config.diffusion
    B, shape, dataset = tc.batch_size, config.network_input(), config.data.dataset
    schedule = make_schedule(dc.schedule, dc.timesteps, zero_terminal_snr=dc.zero_terminal_snr).to(device)
    loss_fn = PROCESSES[dc.process].training_loss(dc, schedule)  # as train() steps
    num_classes = NUM_CLASSES[dataset]

    def stepper(c: Candidate) -> Callable[[], None]:
        torch.manual_seed(0)
        fmt = torch.channels_last if c[1] == "channels_last" else torch.contiguous_format
        model = build_model(config, IMAGE_CHANNELS[dataset], IMAGE_SIZES[dataset], num_classes)
        model = model.to(device).to(memory_format=fmt).train()
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, fused=True)
        x0 = torch.randn(B, *shape, device=device).contiguous(memory_format=fmt)  # (B, C, H, W)
        y = torch.randint(0, num_classes + 1, (B,), device=device) if config.model.conditional else None
        gen = torch.Generator(device=device).manual_seed(0)
        amp = resolve_precision(c[0])

        def step() -> None:
            with autocast(device, amp):
                loss = loss_fn(model, x0, y, gen)[0].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)

        for _ in range(warmup):
            step()
        return step

    step = {name(c): stepper(c) for c in options}
    return measure_rounds(step, options, steps=steps, rounds=rounds, max_rounds=max(rounds, MAX_ROUNDS))


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
    config: Config,
    device: torch.device,
    cache_dir: str | Path | None,
    *,
    measure: Probe | None = None,
    session: dict[str, dict] | None = None,
) -> tuple[Config, dict[str, Any] | None]:
    """``config`` with its ``auto`` fields replaced by what is fastest here, and the measurement behind it
    (None when nothing was ``auto``). ``cache_dir`` None measures without caching (the bench). ``session``
    holds the records of this plan, so a noisy probe that is not cached is still made once per model shape
    and every job of the plan trains with its one choice."""
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
        record = _cached(key, cache_dir, lambda: (measure or probe)(config, device, options), session)
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
    record = _cached(probe_key(config, device, [chosen]), cache_dir, lambda: probe(config, device, [chosen], 3))
    return record["seconds"][name(chosen)]


def check_run(
    config: Config, device: torch.device, cache_dir: str | Path | None, interval_rates: list[float]
) -> str | None:
    """Hold a finished run's measured speed against what the probe predicted for its precision and layout.

    ``interval_rates``: the run's images/s per log interval (``TrainResult.interval_rates``); their median
    (the first interval pays for kernel selection) against the batch over the cached seconds per step. When
    the run's step time is more than ``STALE_RATIO`` away, either way, each cache entry that predicted it is
    marked stale, so the next plan measures again; this run keeps its hash. Returns the line that says so."""
    if os.environ.get(OFF) == "off" or cache_dir is None or len(interval_rates) < MIN_INTERVALS:
        return None
    if config.train.compile:  # the probe times eager steps: a compiled run's speed is no evidence against it
        return None
    chosen = (config.train.precision, config.train.memory_format)
    run_seconds = config.train.batch_size / median(interval_rates)
    lines = []
    for path in _entries_predicting(config, device, Path(cache_dir), chosen):
        with FileLock(str(path) + ".lock"):
            record = _read(path)
            if record is None or record.get("stale") or name(chosen) not in record["seconds"]:
                continue
            predicted = record["seconds"][name(chosen)]
            ratio = run_seconds / predicted
            if 1 / STALE_RATIO <= ratio <= STALE_RATIO:
                continue
            record["stale"] = {"run_seconds": run_seconds, "predicted": predicted, "run": config.train_hash()}
            _write(path, record)
            lines.append(
                f"autotune: run {config.train_hash()} stepped in {1000 * run_seconds:.0f} ms, the probe predicted "
                f"{1000 * predicted:.0f} ms for {name(chosen)} ({ratio:.2f}x): {path.name} marked stale, "
                "the next plan measures again"
            )
    return "; ".join(lines) or None


def refresh(
    config: Config, device: torch.device, cache_dir: str | Path, per_round: dict[str, list[float]]
) -> dict[str, Any] | None:
    """Replace the cache entry of ``config``'s probe (its ``auto`` fields still ``auto``) with seconds per step
    timed more carefully elsewhere (``harness bench``'s rounds, by candidate name), when those rounds agree as
    a probe's must. The record, or None when a candidate was not timed."""
    options = candidates(config, device)
    if any(name(c) not in per_round for c in options):
        return None
    key = probe_key(config, device, options)
    out = {**_record(key, agreement({name(c): per_round[name(c)] for c in options}, options)), "source": "bench"}
    if out["settled"]:
        path = _path(Path(cache_dir), key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            _write(path, out)
    return out


def _entries_predicting(config: Config, device: torch.device, cache_dir: Path, chosen: Candidate) -> list[Path]:
    """The cache files whose probe could have predicted ``chosen`` for ``config``: the resolved config does not
    say which of its fields were ``auto``, so every candidate list it could have come from is tried."""
    precisions = {(chosen[0],), tuple(p for p in PRECISIONS if p == "fp32" or native_bf16(device))}
    layouts = {(chosen[1],), LAYOUTS}
    paths = []
    for ps in precisions:
        for ms in layouts:
            options = [(p, m) for p in ps for m in ms]
            if chosen in options and (path := _path(cache_dir, probe_key(config, device, options))).is_file():
                paths.append(path)
    return paths


def _record(key: dict[str, Any], found: Measured | dict[str, float]) -> dict[str, Any]:
    if not isinstance(found, Measured):  # a probe that knows no rounds: its seconds, taken as settled
        found = Measured(found)
    options = [tuple(c.split("+")) if "+" in c else (c, "contiguous") for c in key["candidates"]]
    return {
        "key": key,
        "seconds": found.seconds,
        "choice": name(choose(found.seconds, options)),
        "measured": True,
        "rounds": found.rounds,
        "spread": found.spread,
        "margin": found.margin,
        "settled": found.settled,
    }


def _cached(
    key: dict[str, Any],
    cache_dir: str | Path | None,
    measure: Callable[[], Measured | dict[str, float]],
    session: dict[str, dict] | None = None,
) -> dict:
    """The cached record for ``key``, measured once under a file lock (two workers never probe one model twice
    at once: they would also slow each other's measurement). A record whose rounds did not settle is kept in
    ``session`` only; a stale one is measured again and replaced."""
    if cache_dir is None:
        return _record(key, measure())
    path = _path(Path(cache_dir), key)
    if session is not None and path.name in session:
        return session[path.name]
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        old = _read(path) if path.exists() else None
        if old is not None and old["key"] != key:
            warnings.warn(f"measuring again: {path}: the entry of another probe", stacklevel=2)
            old = None
        if old is not None and not old.get("stale"):
            # Why an earlier plan measured again was that plan's news (entries written before this was dropped).
            out = {**{k: v for k, v in old.items() if k not in PLAN_ONLY}, "cached": True}
        else:
            out = _record(key, measure())
            if old is not None:
                out["remeasured"] = "stale"  # what describe_record says: why this was not read from the cache
                out = _keep_incumbent(out, old["choice"])
            if out["settled"]:
                _write(path, {k: v for k, v in out.items() if k not in PLAN_ONLY})
    if session is not None:
        session[path.name] = out
    return out


def _keep_incumbent(record: dict[str, Any], incumbent: str) -> dict[str, Any]:
    """A stale entry measured again keeps its earlier choice while that is within ``BF16_MARGIN`` of the fastest:
    a new choice changes every config's hash, so finished runs would train again for a few percent (or for
    noise). The bench's ``auto_vs_best`` tolerance is the same 5%."""
    seconds = record["seconds"]
    if record["choice"] == incumbent or incumbent not in seconds:
        return record
    if seconds[incumbent] <= (1 + BF16_MARGIN) * min(seconds.values()):
        return {**record, "choice": incumbent, "kept": "within the margin of the fastest, so runs keep their hashes"}
    return record


def _path(cache_dir: Path, key: dict[str, Any]) -> Path:
    return cache_dir / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.json"


def _read(path: Path) -> dict[str, Any] | None:
    """A cache entry, or None with one warning when it cannot be read or is not an entry's shape (it is then
    measured again: a cache is only a cache)."""
    try:
        record = json.loads(path.read_text())
        ok = (
            isinstance(record, dict)
            and isinstance(record.get("key"), dict)
            and isinstance(record.get("seconds"), dict)
            and all(isinstance(v, float | int) and v > 0 for v in record["seconds"].values())
            and record.get("choice") in record["seconds"]
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.warn(f"measuring again: {path}: unreadable ({e})", stacklevel=3)
        return None
    if not ok:
        warnings.warn(f"measuring again: {path}: not an autotune entry", stacklevel=3)
        return None
    return record


def _write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.replace(path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
