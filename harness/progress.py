"""Feedback while waiting: a bar where someone watches a terminal, a plain line every N% elsewhere.

Anything that takes more than a few seconds (the domain classifier, reference statistics, a job's
training steps, sampling one evaluation setting) reports through ``Progress``. A worker process, a
Slurm job or a redirected log gets lines instead of a bar, so the log of a non-interactive run still
shows how far each step is; tasks shorter than ``QUIET_SECONDS`` print nothing in that mode. Bars go
to stderr (tqdm's convention); lines go to stdout with the run's other progress lines, so that stderr
keeps to errors, which are one line each.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import time
from typing import TextIO

QUIET_SECONDS = 5.0  # a line-mode task that ends sooner than this says nothing
BAR_DELAY = 2.0  # seconds before a bar appears: one that would flash and vanish is not drawn


def interactive(stream: TextIO) -> bool:
    """A bar only on a terminal, and not in a worker process: its parent draws the bar of the whole run."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and multiprocessing.parent_process() is None


def duration(seconds: float) -> str:
    """45s, 3m12s, 2h05m: how long, as people read it."""
    if not math.isfinite(seconds):
        return "unknown"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def say(line: str) -> None:
    """One progress line outside a counted task (``Progress``'s lines go to the same place)."""
    print(line, file=sys.stdout, flush=True)


class Progress:
    """Progress of one task of ``total`` units.

    ``enabled``: True a tqdm bar, False nothing, None (default) a bar if ``interactive(stream)`` else a
    line each time another ``every`` of the total is done (desc, percent, units, rate, ``stats``, ETA).
    ``stream`` defaults to stderr for a bar and stdout for lines.
    ``update`` never touches the device: callers pass stats they already have on the host.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "step",
        initial: int = 0,
        enabled: bool | None = None,
        every: float = 0.1,
        stream: TextIO | None = None,
    ):
        self.total, self.desc, self.unit, self.every = max(1, total), desc, unit, every
        self.n = self.start_n = initial
        self.start = time.perf_counter()
        self.stats: dict[str, str] = {}
        self.printed = False
        self._next = self._boundary_after(initial)
        self.bar = None
        self.lines = enabled is None and not interactive(stream or sys.stderr)
        self.stream = stream or (sys.stdout if self.lines else sys.stderr)
        if enabled or (enabled is None and not self.lines):
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                file=self.stream,
                dynamic_ncols=True,
                delay=BAR_DELAY,
            )

    def _boundary_after(self, n: int) -> int:
        """The first unit count past ``n`` at which a line is due (every ``every`` of the total)."""
        k = math.floor(n / (self.total * self.every)) + 1
        return math.ceil(k * self.total * self.every)

    def set_total(self, total: int) -> None:
        self.total = max(1, total)
        self._next = self._boundary_after(self.n)
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def set_stats(self, **stats) -> None:
        """Figures shown beside the count (loss, images/s): in the bar's postfix, or in the next line."""
        self.stats = {k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in stats.items()}
        if self.bar is not None:
            self.bar.set_postfix(self.stats, refresh=False)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and self.n >= self._next:
            self._next = self._boundary_after(self.n)
            if self.printed or time.perf_counter() - self.start >= QUIET_SECONDS:
                self.printed = True
                # A worker on its parent's terminal: wipe the parent's bar from the line; the parent redraws it.
                wipe = "\r\x1b[K" if getattr(self.stream, "isatty", lambda: False)() else ""
                print(wipe + self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else math.nan
        left = self.total - self.n
        parts = [f"{self.desc}: {100 * min(self.n, self.total) // self.total:3d}% ({self.n}/{self.total} {self.unit}s)"]
        if math.isfinite(rate) and done:
            parts.append(f"{rate:.3g} {self.unit}s/s")
        parts += [f"{k}={v}" for k, v in self.stats.items()]
        if left > 0:
            parts.append(f"ETA {duration(left / rate) if done and rate > 0 else 'unknown'}")
        else:
            parts.append(f"done in {duration(elapsed)}")
        return ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
