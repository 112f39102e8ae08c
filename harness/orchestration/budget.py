"""A plan's cost before it runs (``harness run --dry-run``, and ``harness run`` before it trains): training images
and sampling network evaluations per job, and the wall time they take, estimated from finished runs of the same
model shape on this store or, before any has finished, from timing the model itself on this machine (the
autotune probe's seconds per training step, and a timed forward pass at the evaluation batch for sampling).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..config.schema import DEVICE, ROLE, arm_text, eval_key, parse_eval_key
from ..config.spec import Plan
from ..progress import duration
from .placement import slots
from .tracking import MlflowStore


def evaluations(steps: int, eval_every: int) -> int:
    """How many times training evaluates every setting: each ``eval_every`` steps and at the end."""
    return len(set(range(eval_every, steps + 1, eval_every)) | {steps}) if eval_every else 1


@dataclass
class Budget:
    """What one job costs: training images (steps x batch) and network evaluations of sampling per setting."""

    images: int
    sampling: dict[str, tuple[int, int, int]]  # setting label -> (samples, NFE per sample, evaluations)

    @classmethod
    def of(cls, config: Config, evaluate_only: bool = False) -> Budget:
        from ..evaluation.evaluate import sampling_nfe

        n = 1 if evaluate_only else evaluations(config.train.steps, config.train.eval_every)
        if config.train.eval_epochs and not evaluate_only:  # instead of eval_every (Config allows one of them)
            n = len({*config.eval_epoch_steps(), config.train.steps})
        sampling = {s.label: (config.eval.num_samples, sampling_nfe(config, s), n) for s in config.eval.samplers}
        return cls(0 if evaluate_only else config.train.steps * config.train.batch_size, sampling)

    @property
    def nfe(self) -> int:
        return sum(samples * nfe * n for samples, nfe, n in self.sampling.values())


# The fields that decide how fast a job trains and samples (with the device its runs record).
SPEED_FIELDS = ("data.dataset", "train.batch_size", "train.precision", "train.compile", "train.memory_format")


def speed_key(config: Config) -> tuple[tuple[str, Any], ...]:
    """The model shape and the ``SPEED_FIELDS`` of ``config``, as (dotted key, logged param value) pairs."""
    flat = config.flat()
    # The fields the backbone reads (ModelConfig.identity): a DiT's hidden width does not slow a UNet, and
    # UNet runs tracked before model.backbone existed still match.
    shape = [f"model.{k}" for k in config.model.identity()]
    return tuple((k, flat[k]) for k in [*shape, *SPEED_FIELDS])


@dataclass
class Throughput:
    images_per_second: float  # training, per job, as finished runs logged it
    nfe_per_second: float | None  # sampling: samples x NFE per second, per job
    overhead_seconds: float  # the rest of a training run's wall time: checkpoints, metrics, grids, logging
    runs: int  # 0: probed on this machine (``probed_throughput``), not measured by finished runs


def measured_throughput(store: MlflowStore | None, config: Config, device: str) -> Throughput | None:
    """Medians over finished training runs of this model shape and speed-relevant fields on ``device`` (a
    device type: cpu, cuda) in any experiment of ``store``; None where none was measured."""
    import statistics

    if store is None:
        return None
    where = " and ".join([f"tags.`{ROLE}` = 'train'", *(f"params.`{k}` = '{v}'" for k, v in speed_key(config))])
    exps = [e.experiment_id for e in store.client.search_experiments()]
    runs = [
        r
        for r in (store.client.search_runs(exps, where, max_results=200) if exps else [])
        if r.info.status == "FINISHED"
        and r.data.tags.get(DEVICE, "").split(":")[0] == device
        and "train/images_per_second_mean" in r.data.metrics
    ]
    if not runs:
        return None
    rates, overheads = [], []
    for r in runs:
        # An evaluation's constants (nfe, num_generated) are params of the training run (tracking.MlflowTracker).
        m = {k: float(v) for k, v in r.data.params.items() if parse_eval_key(k)} | r.data.metrics
        busy = m.get("train/seconds", 0.0)
        n = evaluations(int(r.data.params.get("train.steps", 0)), int(r.data.params.get("train.eval_every", 0)))
        for key in m:
            label, metric = parse_eval_key(key) or ("", "")
            if metric == "sample_seconds" and m[key] > 0 and eval_key(label, "nfe") in m:
                rates.append(m.get(eval_key(label, "num_generated"), 0) * m[eval_key(label, "nfe")] / m[key])
                busy += n * m[key]  # the last evaluation's seconds stand for each of the run's n
        if r.info.end_time and r.info.start_time:
            overheads.append(max(0.0, (r.info.end_time - r.info.start_time) / 1000 - busy))
    return Throughput(
        statistics.median(r.data.metrics["train/images_per_second_mean"] for r in runs),
        statistics.median(rates) if rates else None,
        statistics.median(overheads) if overheads else 0.0,
        len(runs),
    )


FORWARD_ROUNDS = 3  # timed forward passes at the evaluation batch, after one warm-up


def probed_throughput(
    config: Config, device, records: list[dict[str, Any]] = (), threads: int | None = None
) -> Throughput | None:
    """Rates from timing this model here, before any run has finished: training from the autotune probe (the
    record ``resolve_plan`` returned for this model shape, else ``autotune.step_seconds``, cached per host), sampling
    from forward passes at the evaluation batch (each row of a batch is one NFE). Checkpoints, metrics and the
    one-time steps (domain classifiers, reference statistics) are not counted. None under HARNESS_AUTOTUNE=off.
    ``threads``: the torch threads each job gets when jobs share the CPU (the autotune probe's too), so the
    sampling rate is that of one job beside the others, not of one process alone on the machine."""

    import torch

    from ..training.autotune import OFF, name, step_seconds
    from .placement import autotune_cache

    if os.environ.get(OFF) == "off":
        return None
    tc, mine = config.train, name((config.train.precision, config.train.memory_format))
    shape = {"model": config.model.identity(), "input": list(config.network_input()), "batch_size": tc.batch_size}
    shape |= {"process": config.diffusion.process, "device": device.type}
    record = next((r for r in records if all(r["key"].get(k) == v for k, v in shape.items())), None)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)  # the probe's cache key and the timing below: one job's threads
    try:
        step = (record or {}).get("seconds", {}).get(mine) or step_seconds(config, device, autotune_cache())
        forward = _forward_seconds(config, device)
    finally:
        torch.set_num_threads(before)
    return Throughput(tc.batch_size / step, config.eval.batch_size / forward, 0.0, 0)


def _forward_seconds(config: Config, device) -> float:
    """Seconds of one forward pass of ``config``'s network at its evaluation batch (each row is one NFE)."""
    import time

    import torch

    from ..config import IMAGE_CHANNELS, IMAGE_SIZES, NUM_CLASSES
    from ..device import autocast, resolve_precision
    from ..training.train import build_model

    dataset, rows = config.data.dataset, config.eval.batch_size
    model = build_model(config, IMAGE_CHANNELS[dataset], IMAGE_SIZES[dataset], NUM_CLASSES[dataset]).to(device).eval()
    x = torch.randn(rows, *config.network_input(), device=device)
    t = torch.full((rows,), config.diffusion.timesteps // 2, device=device)
    y = torch.zeros(rows, dtype=torch.long, device=device) if config.model.conditional else None
    with torch.no_grad(), autocast(device, resolve_precision(config.train.precision)):
        for i in range(1 + FORWARD_ROUNDS):
            if i == 1:
                torch.cuda.synchronize(device) if device.type == "cuda" else None
                start = time.perf_counter()
            model(x, t, y)
        torch.cuda.synchronize(device) if device.type == "cuda" else None
    return (time.perf_counter() - start) / FORWARD_ROUNDS


def estimate_seconds(
    plan: Plan, rows: list[dict[str, Any]], store: MlflowStore | None, records: list[dict[str, Any]] = ()
) -> tuple[float | None, str]:
    """Wall seconds for the jobs still to do, and where the rates came from (or why there is no estimate):
    finished runs of the same model shape on this device type where the store has them, else this machine's
    probe of the model (``probed_throughput``; ``records``: the autotune records ``resolve_plan`` returned)."""
    from ..device import resolve_device

    gpus, n_slots, threads = slots(plan.spec.cpu_jobs, plan.spec.jobs_per_gpu)
    seconds, sources = [], {}
    for job, row in zip(plan.jobs, rows):
        if row["state"] == "done":
            continue
        device = "cuda" if gpus else resolve_device(job.config.train.device).type
        key = (device, speed_key(job.config))
        if key not in sources:
            sources[key] = measured_throughput(store, job.config, device)
            if sources[key] is None or (sources[key].nfe_per_second is None and job.config.eval.samplers):
                sources[key] = probed_throughput(job.config, resolve_device(device), records, threads)
        rate = sources[key]
        if rate is None:
            where = store.uri if store else "the tracking store (none yet)"
            return None, (
                f"no finished run of this model shape on {device} in {where} measured its speed, and "
                "HARNESS_AUTOTUNE=off forbids probing it"
            )
        budget = Budget.of(job.config, evaluate_only=row["state"] == "evaluate")
        seconds.append(
            budget.images / rate.images_per_second
            + budget.nfe / (rate.nfe_per_second or math.inf)
            + rate.overhead_seconds
        )
    if not seconds:
        return 0.0, "nothing left to do"
    measured = [t for t in sources.values() if t.runs]
    probed = [t for t in sources.values() if not t.runs]
    parts = []
    if measured:
        rates = "; ".join(
            f"{t.images_per_second:.0f} images/s, {t.nfe_per_second or 0:.0f} NFE/s and {t.overhead_seconds:.0f} s "
            f"of checkpoints and metrics per job, over {t.runs} run(s)"
            for t in measured
        )
        parts.append(f"measured by finished runs of the same model shape on this device type in {store.uri}: {rates}")
    if probed:
        rates = "; ".join(f"{t.images_per_second:.0f} images/s, {t.nfe_per_second:.0f} NFE/s" for t in probed)
        parts.append(
            f"probed on this machine before any run (the autotune probe's training step, a timed forward pass for "
            f"sampling): {rates}; checkpoints, metrics and one-time steps (classifiers, reference statistics) not "
            "counted"
        )
    text = "; ".join(parts) + f"; {n_slots} job(s) at a time"
    return max(max(seconds), sum(seconds) / n_slots), text


def estimate_line(
    plan: Plan, rows: list[dict[str, Any]], store: MlflowStore | None, records: list[dict[str, Any]] = ()
) -> str:
    """``estimated time: 12m (...)``: the line the dry run and ``harness run`` print before anything trains."""
    seconds, source = estimate_seconds(plan, rows, store, records)
    return f"estimated time: {duration(seconds) if seconds is not None else 'unknown'} ({source})"


def check_memory(plan: Plan, executor: str = "local") -> list[str]:
    """Refuse a plan whose largest jobs, as many at a time as the executor runs, cannot fit this machine's memory
    (``memory.DoesNotFit``, one line naming the job and the field to lower), before the autotune probe allocates
    the first batch or anything is written; else the line the dry run prints. A Slurm plan runs on its nodes, whose
    memory is Slurm's to check, so it is not held against this machine's."""
    import torch

    from ..device import resolve_device
    from .memory import check

    if executor == "slurm" or not plan.jobs:
        return []
    gpus, n_slots, _ = slots(plan.spec.cpu_jobs, plan.spec.jobs_per_gpu)
    # Every GPU is taken to be the first one's size; each holds jobs_per_gpu of the plan's jobs.
    device = torch.device("cuda", 0) if gpus else resolve_device(plan.jobs[0].config.train.device)
    named = [(f"job seed={j.seed} ({arm_text(j.arm)})", j.config) for j in plan.jobs]  # hashes come after autotune
    return check(named, device, plan.spec.jobs_per_gpu if gpus else n_slots)


def dry_run(
    plan: Plan, rows: list[dict[str, Any]], store: MlflowStore | None, records: list[dict[str, Any]] = ()
) -> list[str]:
    """What ``harness run --dry-run`` prints: each job and its state, the budget, the estimated time."""
    budgets = [Budget.of(job.config) for job in plan.jobs]
    lines = [f"{plan.spec.name} [{plan.profile}]: {plan.spec.question}"]
    for r, job, b in zip(rows, plan.jobs, budgets):
        steps = f"{job.config.train.steps:,} x {job.config.train.batch_size}"
        arm = arm_text(r["arm"])
        lines.append(f"  {r['config_hash']}  {r['state']:>8}  seed={r['seed']}  {arm}  {b.images:,} images ({steps})")
    lines += [
        "budget (every job from scratch):",
        f"  training: {sum(b.images for b in budgets):,} images in {len(budgets)} jobs",
    ]
    for label, (samples, nfe, n) in {k: v for b in budgets for k, v in b.sampling.items()}.items():  # all arms
        lines.append(
            f"  sampling {label}: {samples:,} samples x {nfe} NFE x {n} evaluation(s) = {samples * nfe * n:,} per job"
        )
    lines.append(f"  sampling in all: {sum(b.nfe for b in budgets):,} network evaluations (samples x NFE)")
    return [*lines, estimate_line(plan, rows, store, records)]
