"""Where metrics go. Training and evaluation talk to a tracker object passed in; they never import
mlflow (the MLflow tracker lives in ``harness/mlflow_tracker.py``)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Protocol, Sequence

import numpy as np


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_series(self, key: str, values: Sequence[float], steps: Sequence[int]) -> None: ...
    def log_image(self, image: np.ndarray, key: str, step: int) -> None: ...
    def log_artifact(self, path: str) -> None: ...


class NullTracker:
    """Logs nothing: for tests and for scripts that only want the returned result."""

    def log_params(self, params): pass
    def log_metrics(self, metrics, step=None): pass
    def log_series(self, key, values, steps): pass
    def log_image(self, image, key, step): pass
    def log_artifact(self, path): pass


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
