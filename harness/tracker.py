"""What training and evaluation log through: a tracker object passed in, never a global.

The loop and the evaluator see only this protocol, so they run without MLflow (tests, scripts,
benchmarks); ``orchestration/tracking.py`` implements it on an MLflow run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_series(self, key: str, values: Sequence[float], steps: Sequence[int]) -> None: ...
    def log_image(self, image: np.ndarray, key: str, step: int) -> None: ...
    def log_artifact(self, path: str) -> None: ...
    def last_step(self, key: str) -> int: ...


class NullTracker:
    """Logs nothing: for tests and for scripts that only want the returned result."""

    def log_params(self, params):
        return None

    def log_metrics(self, metrics, step=None):
        return None

    def log_series(self, key, values, steps):
        return None

    def log_image(self, image, key, step):
        return None

    def log_artifact(self, path):
        return None

    def last_step(self, key):
        return 0


class MemoryTracker:
    """Keeps everything in memory, keyed like MLflow: ``metrics[key] == [(step, value), ...]``."""

    def __init__(self):
        self.params: dict[str, Any] = {}
        self.metrics: dict[str, list[tuple[int | None, float]]] = defaultdict(list)
        self.images: list[tuple[str, int]] = []
        self.artifacts: list[str] = []

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        for k, v in metrics.items():
            self.metrics[k].append((step, float(v)))

    def log_series(self, key, values, steps):
        self.metrics[key].extend((s, float(v)) for s, v in zip(steps, values))

    def log_image(self, image, key, step):
        self.images.append((key, step))

    def log_artifact(self, path):
        self.artifacts.append(path)

    def last_step(self, key):
        return max((s or 0 for s, _ in self.metrics.get(key, [])), default=0)


class LoggedAfter:
    """Passes on only what is logged after ``step``: a resumed run does not log again what its tracker has.

    Training is deterministic, so the values it would log again equal those already there; logging them
    twice would only put two points at each of those steps. Values without a step always pass.
    """

    def __init__(self, tracker: Tracker, step: int):
        self.tracker, self.step = tracker, step

    def log_params(self, params):
        self.tracker.log_params(params)

    def log_metrics(self, metrics, step=None):
        if step is None or step > self.step:
            self.tracker.log_metrics(metrics, step=step)

    def log_series(self, key, values, steps):
        new = [(v, s) for v, s in zip(values, steps) if s > self.step]
        if new:
            self.tracker.log_series(key, [v for v, _ in new], [s for _, s in new])

    def log_image(self, image, key, step):
        if step > self.step:
            self.tracker.log_image(image, key, step)

    def log_artifact(self, path):
        self.tracker.log_artifact(path)

    def last_step(self, key):
        return self.tracker.last_step(key)


class StoreUnavailable(RuntimeError):
    """The tracking store cannot be opened, reached or written."""
