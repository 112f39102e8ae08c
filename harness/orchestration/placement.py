"""Where a plan's jobs run and what that machine makes of them: the job slots and torch threads per job,
and the configs' ``auto`` fields (``train.precision``, ``train.memory_format``) measured there.

``auto`` is resolved once, for the whole plan, before anything is hashed: ``plan.json``, the job locks, the
store's runs and the reports then all see one hash per training, and that hash names the precision and
layout that ran. The probe (``training.autotune``) runs where the jobs will run: in this process for local
executors, as one Slurm job for ``--executor slurm`` (a login node is not the GPU node), with the threads
each job will get.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..config.spec import Plan
from ..private import SUBMITIT_READS, private_dir
from .executors import array_result, submit_array


def slots(cpu_jobs: int, jobs_per_gpu: int) -> tuple[int, int, int]:
    """(visible GPUs, parallel jobs, torch threads per job) on this machine."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    jobs = gpus * jobs_per_gpu if gpus else max(1, cpu_jobs)
    return gpus, jobs, max(1, (os.cpu_count() or 1) // jobs)


def autotune_cache() -> Path:
    from ..evaluation.evaluate import default_cache_dir

    return default_cache_dir() / "autotune"


def resolve_configs(item: tuple[list[str], int, str]) -> list[tuple[str, dict[str, Any] | None]]:
    """Each config (JSON) with its ``auto`` fields measured here, with ``threads`` torch threads; the cache
    makes every model after the first of its shape free. Runs in this process or on a Slurm node."""
    import torch

    from ..device import resolve_device
    from ..training.autotune import resolve

    configs, threads, cache = item
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, session = [], {}  # a noisy probe is not cached: it is still made once for the whole plan
        for text in configs:
            config = Config.model_validate_json(text)
            device = resolve_device(os.environ.get("HARNESS_DEVICE") or config.train.device)
            resolved, record = resolve(config, device, cache, session=session)
            out.append((resolved.model_dump_json(), record))
        return out
    finally:
        torch.set_num_threads(before)


def resolve_plan(
    plan: Plan,
    *,
    executor: str = "local",
    root: Path | None = None,
    cluster: str | None = None,
    say=print,
) -> tuple[Plan, list[dict[str, Any]]]:
    """``plan`` with every job's ``auto`` fields resolved, and the probe records behind them (one per model
    shape). Two arms that become one configuration (``precision: [auto, fp32]`` where fp32 wins) are an error,
    as two equal arms are in the spec."""
    if not any(job.config.train.unresolved() for job in plan.jobs):
        return plan, []
    _, _, threads = slots(plan.spec.cpu_jobs, plan.spec.jobs_per_gpu)
    item = ([job.config.model_dump_json() for job in plan.jobs], threads, str(autotune_cache()))
    if executor == "slurm":
        folder = private_dir(Path(root or ".") / "slurm", SUBMITIT_READS)
        say(f"autotune: measuring precision and layout on a Slurm node ({plan.spec.name})")
        results = array_result(submit_array(resolve_configs, [item], plan.spec.slurm, folder, cluster)[0])
        if isinstance(results, Exception):
            raise results
    else:
        results = resolve_configs(item)
    jobs, records, seen = [], {}, {}
    for job, (text, record) in zip(plan.jobs, results):
        job = replace(job, config=Config.model_validate_json(text))
        if job.config_hash in seen:
            raise ConfigError(
                f"{plan.source}: axes: arms {seen[job.config_hash]} and {job.arm_label} are one configuration here "
                f"(auto resolved to {job.config.train.precision}, {job.config.train.memory_format})"
            )
        seen[job.config_hash] = job.arm_label
        jobs.append(job)
        if record is not None and record.get("seconds"):
            records.setdefault(json.dumps(record["key"], sort_keys=True), record)  # one per model shape
    for record in records.values():
        say(describe_record(record))
    return replace(plan, jobs=jobs), list(records.values())


def describe_record(record: dict[str, Any]) -> str:
    """One line: what was measured, where, and what ``auto`` became."""
    if not record.get("measured", True):  # HARNESS_AUTOTUNE=off, or a single candidate: nothing was timed
        from ..training.autotune import OFF

        why = "HARNESS_AUTOTUNE=off" if os.environ.get(OFF) == "off" else "one candidate"
        return f"autotune (not measured: {why}) -> {record['choice']}"
    key, seconds = record.get("key", {}), record["seconds"]
    times = ", ".join(f"{name} {1000 * s:.0f} ms" for name, s in sorted(seconds.items(), key=lambda kv: kv[1]))
    origin = "cached" if record.get("cached") else "measured"
    if "rounds" in record and not record.get("cached"):
        origin += f" in {record['rounds']} rounds"
    if record.get("remeasured"):  # a run had stepped far from this entry's prediction
        origin += ", the cached entry was stale" + (
            "; its choice is kept, within 5% of the fastest, so runs keep their hashes" if record.get("kept") else ""
        )
    if record.get("settled") is False:
        origin += (
            f", noisy: {record['rounds']} rounds strayed {100 * record['spread']:.0f}% > the deciding margin "
            f"{100 * record['margin']:.0f}%; for this plan only, not cached"
        )
    shape = "x".join(str(d) for d in key.get("input", []))
    what = f"{key.get('backbone', 'model')} {shape} batch {key.get('batch_size')}"
    return f"autotune ({origin}, {key.get('host')}): {what}: {times} per step -> {record['choice']}"
