"""Ctrl-C and SIGTERM: the first one stops the launch cleanly, a second one at once.

The first interrupt is a request (``requested()``): no job starts after it, and a training loop that sees it
checkpoints at its next step and raises ``Stopped``, so the rerun resumes where it stopped. A job that cannot
stop at a step (an evaluation in progress) gets ``GRACE_SECONDS``, then a ``KeyboardInterrupt`` where it is; a
second Ctrl-C to the launcher raises one at once. Workers ignore the terminal's SIGINT: the launcher, which
the terminal also interrupts, decides and forwards SIGTERM, so a worker never mistakes the one Ctrl-C it sees
twice (from its process group and from its launcher) for a second one.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

# A job that has not stopped at a step by then is interrupted where it is; it resumes from its last checkpoint.
GRACE_SECONDS = 5.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested = threading.Event()
_expired = threading.Event()  # the grace period ran out: the next SIGINT we simulate is meant
_busy = threading.Event()  # a job is running in this process (``job()``)


class Stopped(KeyboardInterrupt):
    """A training loop stopped at a step after checkpointing, on the first Ctrl-C or SIGTERM."""


class Interrupted(KeyboardInterrupt):
    """A launch that stopped on an interrupt; its message says what finished and how to resume."""


def requested() -> bool:
    """Whether this process was asked to stop (checked by loops at their safe points)."""
    return _requested.is_set()


def request() -> None:
    _requested.set()


def reset() -> None:
    """Forget an earlier request: a new launch in the same process (tests, notebooks) starts afresh."""
    _requested.clear()
    _expired.clear()


@contextlib.contextmanager
def job() -> Iterator[None]:
    """Marks a running job, which the grace period may interrupt; between jobs nothing is interrupted."""
    _busy.set()
    try:
        yield
    finally:
        _busy.clear()


def _interrupt_after(grace: float) -> None:
    def expire() -> None:
        if _busy.is_set():
            _expired.set()
            _thread.interrupt_main(signal.SIGINT)  # runs our SIGINT handler in the main thread

    timer = threading.Timer(grace, expire)
    timer.daemon = True
    timer.start()


def worker_signals(grace: float = GRACE_SECONDS) -> None:
    """In a worker process: SIGTERM (the launcher's) requests a stop; the terminal's SIGINT is ignored."""

    def on_sigint(signum, frame) -> None:
        if _expired.is_set():
            raise KeyboardInterrupt("interrupted: it did not stop at a step within the grace period")

    def on_sigterm(signum, frame) -> None:
        if not _requested.is_set():
            request()
            _interrupt_after(grace)

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigterm)


@contextlib.contextmanager
def launcher_signals(on_first: Callable[[int], None] | None = None, grace: float | None = None) -> Iterator[None]:
    """While a launch runs: the first SIGINT or SIGTERM requests a stop and calls ``on_first(signum)`` (tell
    the user, forward it to the workers); a second raises ``KeyboardInterrupt``. ``grace``: for jobs in this
    process, the seconds before one that has not stopped is interrupted. Outside the main thread, where
    Python delivers no signals, nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()

    def handler(signum, frame) -> None:
        if _requested.is_set():
            raise KeyboardInterrupt("interrupted again: stopped at once")
        request()
        if on_first is not None:
            on_first(signum)
        if grace is not None:
            _interrupt_after(grace)

    before = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)
