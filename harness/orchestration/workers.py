"""Worker processes for local jobs: spawned, each pinned to one device, and dying with their launcher.

Kept below the runner so that any module starting workers (runner, sweep) shares one way to do it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor


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
