"""Files made once per machine and then reused: the domain classifier and the recognizer, the noise-aware
classifier, the reference features of FID.

Workers that start together all find the cache empty. ``made_once`` holds a file lock beside the file, so one
of them makes it while the others wait and then load it. The one that makes it first says what it makes,
why, where it will be cached and about how long it will take, measured on this machine before it starts,
so a first run never sits silent for minutes.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

from .progress import duration, say

T = TypeVar("T")


def made_once(
    path: str | Path,
    load: Callable[[Path], T],
    make: Callable[[], T],
    *,
    what: str,
    why: str,
    estimate: Callable[[], float] | None = None,
    progress: bool | None = None,
) -> T:
    """``load(path)``, or else ``make()`` (which writes ``path``) under ``path``'s lock, announced first.

    ``estimate`` gives the seconds ``make`` should take; it is called only when ``make`` is, and its timing
    is part of the announcement. ``progress`` False says nothing (as in ``harness.progress.Progress``).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", thread_local=False):
        if path.is_file():
            try:
                return load(path)
            except Exception as e:  # a cache is only a cache: an unreadable one is made again
                warnings.warn(f"making the {what} again: cannot read {path} ({e})", stacklevel=2)
        if progress is not False:
            seconds = estimate() if estimate else math.nan
            how_long = f"; about {duration(seconds)} on this machine" if math.isfinite(seconds) else ""
            say(f"{what}: {why}; made once, then cached in {path.parent}{how_long}")
        return make()


def step_seconds(net, loss: Callable, steps: int, reps: int = 2) -> float:
    """Seconds for ``steps`` optimizer steps of a network, from timing ``reps`` steps of ``loss(net)``.

    ``net`` is a throwaway of the shape about to be trained (the timing moves its weights and batch
    statistics); the fastest repetition after a warm-up one stands for a step.
    """
    import torch

    optimizer = torch.optim.AdamW(net.parameters())
    cuda = next(net.parameters()).device.type == "cuda"
    best = math.inf
    with torch.enable_grad():
        for i in range(reps + 1):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss(net.train()).backward()
            optimizer.step()
            if cuda:
                torch.cuda.synchronize()
            if i:  # the first step pays for allocation and kernel selection
                best = min(best, time.perf_counter() - start)
    return best * steps
