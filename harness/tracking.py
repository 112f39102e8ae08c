"""Where metrics go. Training and evaluation talk to a tracker object passed in; they never import
mlflow (the MLflow tracker lives in ``harness/mlflow_tracker.py``)."""
from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path
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

    def log_params(self, params): return None
    def log_metrics(self, metrics, step=None): return None
    def log_series(self, key, values, steps): return None
    def log_image(self, image, key, step): return None
    def log_artifact(self, path): return None


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


# -- MLflow: the only place that imports mlflow -----------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
from .provenance import git_state  # noqa: E402,F401 - re-exported: sweep and bench import it from here
from .schema import COMMIT, HASH, ROLE, SPEC  # noqa: E402,F401 - re-exported for older imports
MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store in this repository (absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlruns' / 'mlflow.db'}"


class MlflowTracker:
    """Logs to one MLflow run through ``MlflowClient`` with its explicit run id (safe in parallel jobs)."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def _metrics(self, items) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(s or 0)) for k, v, s in items if math.isfinite(float(v))]
        for i in range(0, len(metrics), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_BATCH], synchronous=True)

    def log_params(self, params):
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100], synchronous=True)

    def log_metrics(self, metrics, step=None):
        self._metrics((k, v, step) for k, v in metrics.items())

    def log_series(self, key, values, steps):
        self._metrics((key, v, s) for v, s in zip(values, steps))

    def log_image(self, image, key, step):
        self.client.log_image(self.run_id, image, key=key, step=step, synchronous=True)

    def log_artifact(self, path):
        self.client.log_artifact(self.run_id, str(path))

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_dict(self, d: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, d, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class StoreUnavailable(RuntimeError):
    """The tracking store cannot be opened, reached or written."""


class MlflowStore:
    """An MLflow tracking store: experiments, runs, and finding runs by config hash."""

    def __init__(self, uri: str | None = None):
        from mlflow import MlflowClient

        self.uri = uri or default_tracking_uri()
        # An unreachable server should fail in seconds, not after MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        if self.uri.startswith("sqlite:///"):
            folder = Path(self.uri.removeprefix("sqlite:///")).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreUnavailable(f"tracking store {self.uri}: cannot create {folder}: {err.strerror}") from None
            if not os.access(folder, os.W_OK):
                raise StoreUnavailable(f"tracking store {self.uri}: {folder} is not writable")
        self.client = MlflowClient(tracking_uri=self.uri)

    def check(self) -> None:
        """Fail fast, with one line, when the store cannot be reached or written."""
        try:
            self.client.search_experiments(max_results=1)
        except Exception as err:  # noqa: BLE001 - sqlalchemy, HTTP and OS errors alike
            reason = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
            raise StoreUnavailable(f"tracking store {self.uri} is not usable: {reason}") from None

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # artifacts beside the database, whatever the working directory
            location = (REPO / "mlruns" / "artifacts" / name).as_uri() if self.uri == default_tracking_uri() \
                else (Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts" / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # another process created it between our two calls
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def start_run(self, experiment_id: str, name: str, tags: dict[str, Any], parent: str | None = None) -> MlflowTracker:
        tags = {k: str(v) for k, v in tags.items()}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(experiment_id, tags=tags, run_name=name)
        return MlflowTracker(self.client, run.info.run_id)

    def resume_run(self, run_id: str) -> MlflowTracker:
        self.client.update_run(run_id, status="RUNNING")
        return MlflowTracker(self.client, run_id)

    def runs(self, experiment_id: str, tags: dict[str, str]) -> list:
        """Runs of the experiment whose tags equal ``tags``, newest first."""
        clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        return list(self.client.search_runs([experiment_id], " and ".join(clauses), max_results=5000,
                                            order_by=["attributes.start_time DESC"]))
