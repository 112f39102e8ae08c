"""Executors: where work runs. Spawned local processes (a pool for many jobs, or one process per long-lived
worker), each pinned to one device and dying with its launcher, and Slurm job arrays through submitit that
requeue themselves on preemption. The runner's jobs and the sweep's workers both run through here.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def _worker_init(parent: int, devices) -> None:
    die_with_parent(parent)
    # Each worker pins itself to one device slot taken from the shared queue, for its whole life.
    if devices is not None:
        os.environ["HARNESS_DEVICE"] = devices.get()


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` dies, even by SIGKILL: an orphaned worker would train on unseen.

    Linux delivers SIGKILL to us when the parent exits (``PR_SET_PDEATHSIG``); a parent that died before
    that took effect is seen at once, and elsewhere a thread notices that we were handed to another parent.
    What the worker had not checkpointed is lost; the next launch resumes from the checkpoint.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def worker_pool(jobs: int, devices: list[str] | None = None) -> ProcessPoolExecutor:
    """``jobs`` spawned workers that die with this process; each takes one of ``devices`` for its life."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = None
    if devices:
        queue = ctx.Queue()
        for d in devices:
            queue.put(d)
    return ProcessPoolExecutor(
        max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(), queue)
    )


# -- one process per item ------------------------------------------------------------------------------


def _spawned(fn: Callable, item: Any, out: str, parent: int) -> None:
    die_with_parent(parent)  # a launcher killed by SIGKILL leaves no worker training on
    try:
        result: Any = fn(item)
    except Exception as err:  # noqa: BLE001 - reported by the parent, the other processes go on
        result = RuntimeError(f"{type(err).__name__}: {err}")
    Path(out).write_bytes(pickle.dumps(result))


def run_each(fn: Callable, items: list) -> list[Any]:
    """``fn(item)`` in one spawned process per item, all at once; per item its result, or an exception saying
    why there is none (``fn`` raised, or the process died). Plain processes rather than a pool: a pool that
    loses one worker (OOM, kill) ends all the others. ``fn`` is module-level, so it pickles."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:  # 0700: results are read back with pickle
        outs = [str(Path(tmp) / f"{i}.pickle") for i in range(len(items))]
        procs = [ctx.Process(target=_spawned, args=(fn, it, o, os.getpid())) for it, o in zip(items, outs)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return [
            pickle.loads(Path(o).read_bytes()) if Path(o).exists() else RuntimeError(f"died (exit code {p.exitcode})")
            for o, p in zip(outs, procs)
        ]


# -- Slurm --------------------------------------------------------------------------------------------------


class Requeueable:
    """A submitit-callable ``fn(item)`` that requeues itself on preemption or timeout.

    Requeued work resumes from its own checkpoints (training jobs) or storage (sweep workers).
    ``fn`` is a module-level function so the object pickles.
    """

    def __init__(self, fn, item):
        self.fn, self.item = fn, item

    def __call__(self):
        return self.fn(self.item)

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(Requeueable(self.fn, self.item))


def submit_array(fn: Callable, items: list, params: dict[str, Any], folder: Path, cluster: str | None = None):
    """``fn(item)`` per item as one Slurm job array (``params``: submitit's, from the spec's ``slurm:``);
    ``cluster='debug'`` runs them in this process. Returns the jobs, in the items' order."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**params)
    with executor.batch():  # one job array
        return [executor.submit(Requeueable(fn, item)) for item in items]


def array_result(job) -> Any:
    """A job's result, or an exception with the last line of why it has none."""
    from submitit.core.utils import UncompletedJobError

    try:
        return job.result()
    except UncompletedJobError:  # ended by Slurm (scancel, node failure): its state says so, its log's end rarely
        why = f"Slurm job {job.job_id} ended without a result (state: {job.state})"
        return RuntimeError(f"{why}; log: {job.paths.stderr}")
    except Exception as err:  # noqa: BLE001
        return RuntimeError(str(err).splitlines()[-1][:500] if str(err) else type(err).__name__)
