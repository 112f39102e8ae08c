"""Executors: where work runs. Spawned local processes (a pool for many jobs, or one process per long-lived
worker), each pinned to one device and dying with its launcher, and Slurm job arrays through submitit that
requeue themselves on preemption. The runner's jobs and the sweep's workers both run through here.
"""

from __future__ import annotations

import contextlib
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

from .. import stop


def _worker_init(parent: int, devices) -> None:
    die_with_parent(parent)
    stop.worker_signals()
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


# After the grace, the seconds a worker gets to close its runs before the launcher kills it.
KILL_MARGIN_SECONDS = 3.0


def signal_workers(signum: int = signal.SIGTERM) -> list[int]:
    """Send ``signum`` to this process's worker processes (the pool's and ``run_each``'s); their pids.

    SIGTERM asks each to checkpoint and stop (``harness.stop``); SIGKILL ends them where they are, and the
    launcher then closes their runs.
    """
    import multiprocessing as mp

    pids = []
    for p in mp.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signum)
            pids.append(p.pid)
    if signum == signal.SIGKILL:
        for p in mp.active_children():
            p.join(timeout=5)  # dead, so its locks are free before its runs are closed
    return pids


# -- one process per item ------------------------------------------------------------------------------


def _spawned(fn: Callable, item: Any, out: str, parent: int) -> None:
    die_with_parent(parent)  # a launcher killed by SIGKILL leaves no worker training on
    stop.worker_signals()
    try:
        with stop.job():
            result: Any = fn(item)
    except Exception as err:  # noqa: BLE001 - reported by the parent, the other processes go on
        result = RuntimeError(f"{type(err).__name__}: {err}")
    except KeyboardInterrupt as err:  # the launcher's stop: reported like any other reason for no result
        result = RuntimeError(f"interrupted: {err}" if str(err) else "interrupted")
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
        try:
            join_or_kill(procs)
        except BaseException:  # a second Ctrl-C: no worker outlives the launcher's cleanup
            signal_workers(signal.SIGKILL)
            raise
        return [
            pickle.loads(Path(o).read_bytes()) if Path(o).exists() else RuntimeError(f"died (exit code {p.exitcode})")
            for o, p in zip(outs, procs)
        ]


def join_or_kill(procs: list) -> None:
    """Wait for ``procs``; once a stop is requested, SIGKILL those still alive after the grace (and a margin for
    their checkpoint and MLflow calls)."""
    from multiprocessing.connection import wait

    deadline = None
    while alive := [p for p in procs if p.exitcode is None and p.is_alive()]:
        wait([p.sentinel for p in alive], timeout=0.25)
        if stop.requested():
            deadline = deadline or time.monotonic() + stop.GRACE_SECONDS + KILL_MARGIN_SECONDS
            if time.monotonic() > deadline:
                signal_workers(signal.SIGKILL)
    for p in procs:
        p.join()


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
