"""MLflow behind the tracker protocol (``harness/tracker.py``): runs, metrics and the store.

The only module of the harness that imports mlflow; the training loop and the evaluator never see it.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ..config.schema import (
    ARMS_VIEW,
    CONSTANT_METRICS,
    CUSTOM_MODEL_DEVELOPMENT,
    EXPERIMENT_KIND,
    PARENT,
    SHARED_VIEW,
    parse_eval_key,
)
from ..errors import last_line
from ..tracker import StoreUnavailable
from ..writes import DiskFull, is_disk_full
from .mlflow_ui import arms_view, arms_view_url
from .uris import DATABASES, check_tracking_uri, not_mlflow, sqlite_path

REPO = Path(__file__).resolve().parents[2]

MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call
# Training metrics that are often constant (``train/lr`` after a warmup no longer than ``log_every``): held
# back until a value differs from the first, so a run whose learning rate never changes has no flat chart
# (its value is the ``train.lr`` param); once it changes, the held value and all later ones are logged.
WHILE_VARYING = frozenset({"train/lr"})


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store in this repository (absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlruns' / 'mlflow.db'}"


def print_arms_views(server: str, uri: str | None = None) -> None:
    """One line per experiment of the store that has the arms view: its name and link (``make ui``)."""
    store = MlflowStore(uri)
    for exp in store.client.search_experiments():
        if SHARED_VIEW + ARMS_VIEW in exp.tags:
            print(f"{exp.name}: {arms_view_url(server, exp.experiment_id)}")


class MlflowTracker:
    """Logs to one MLflow run through ``MlflowClient`` with its explicit run id (safe in parallel jobs)."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id
        self._held: dict[str, tuple[float, int] | None] = {}  # WHILE_VARYING key -> its first (value, step)
        self._constants: set[str] = set()  # constant eval keys already logged as params by this tracker

    def _metrics(self, items) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        kept = []
        for k, v, s in items:
            v, s = float(v), int(s or 0)
            if math.isfinite(v):
                kept += self._route(k, v, s)
        metrics = [Metric(k, v, now, s) for k, v, s in kept]
        for i in range(0, len(metrics), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_BATCH], synchronous=True)

    def _route(self, key: str, value: float, step: int) -> list[tuple[str, float, int]]:
        """What of one value is logged as a metric; a constant of the run becomes a param instead.

        A metric the schema declares constant (``CONSTANT_METRICS``, such as ``eval/<label>/nfe``) is the
        same at every step, so its chart would be a flat line: it is logged once, as a param of that name.
        """
        parsed = parse_eval_key(key)
        if parsed is not None and parsed[1] in CONSTANT_METRICS:
            if key not in self._constants:
                self._constants.add(key)
                self.log_params({key: int(value) if value.is_integer() else value})
            return []
        if key not in WHILE_VARYING:
            return [(key, value, step)]
        if key not in self._held:  # a resumed run whose value has varied already logs on
            varied = key in self.client.get_run(self.run_id).data.metrics
            self._held[key] = None if varied else (value, step)
            return [(key, value, step)] if varied else []
        first = self._held[key]
        if first is None:
            return [(key, value, step)]
        if value == first[0]:
            return []
        self._held[key] = None
        return [(key, first[0], first[1]), (key, value, step)]

    def log_params(self, params):
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    def log_metrics(self, metrics, step=None):
        self._metrics((k, v, step) for k, v in metrics.items())

    def log_series(self, key, values, steps):
        self._metrics((key, v, s) for v, s in zip(values, steps))

    def log_image(self, image, key, step):
        self.client.log_image(self.run_id, image, key=key, step=step, synchronous=True)

    def log_artifact(self, path):
        self.client.log_artifact(self.run_id, str(path))

    def last_step(self, key):
        return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=0)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_dict(self, d: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, d, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def log_dataset(self, name: str, digest: str, source: str, context: str) -> None:
        """A dataset input (MLflow's dataset lineage: the run page's "Datasets used" and the runs table)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        dataset = Dataset(name=name, digest=digest, source_type="local", source=source)
        self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])])


class SystemMetrics:
    """MLflow's system metrics (CPU, memory, disk, network; GPU with ``nvidia-ml-py``) for one run by id.

    ``mlflow.enable_system_metrics_logging`` only watches runs opened with ``mlflow.start_run`` in the
    current process; the harness logs through ``MlflowClient`` with explicit run ids in worker processes,
    so it runs MLflow's ``SystemMetricsMonitor`` itself: a daemon thread that samples every
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (default 10) off the training loop. A context
    manager, so the thread ends (and its last samples are flushed) however the job ends.
    """

    def __init__(self, uri: str, run_id: str, resume: bool = False):
        self.uri, self.run_id, self.resume, self.monitor = uri, run_id, resume, None

    def __enter__(self) -> SystemMetrics:
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # Best effort and quiet: the monitor fails only when the store is gone, which the job itself reports
        # in its one line (a dead server's job would otherwise also print MLflow's warnings per thread).
        logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)
        # resume_logging: a resumed run's samples continue its step axis instead of restarting at 0.
        try:
            self.monitor = SystemMetricsMonitor(self.run_id, resume_logging=self.resume, tracking_uri=self.uri)
        except Exception as err:  # noqa: BLE001 - a job trains without system metrics rather than not at all
            print(f"system metrics off for run {self.run_id[:8]}: {last_line(err)}", file=sys.stderr)
            return self
        self.monitor.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.monitor is not None:
            self.monitor.finish()


def _unreachable(err: BaseException) -> str | None:
    """Why ``err`` means the store cannot be reached (refused, timed out, locked), or None for other errors."""
    import requests
    import sqlalchemy.exc

    seen = err
    while seen is not None:  # MLflow wraps the transport error: look down the chain
        if isinstance(seen, (requests.ConnectionError, requests.Timeout, sqlalchemy.exc.OperationalError)):
            text = str(seen)
            errno = re.search(r"\[Errno -?\d+\] ([^\"')(]+)", text)
            return errno.group(1).strip() if errno else (text.strip().splitlines() or [type(seen).__name__])[0][:200]
        seen = seen.__cause__ or seen.__context__
    return None


def _reach_database(uri: str) -> None:
    """One connection attempt with a timeout: MLflow's own opening retries a refused one for 100 seconds,
    printing a warning each time."""
    import sqlalchemy

    timeout = {"postgresql": {"connect_timeout": 10}, "mysql": {"connect_timeout": 10}}
    engine = sqlalchemy.create_engine(uri, connect_args=timeout.get(uri.partition(":")[0].partition("+")[0], {}))
    try:
        with engine.connect():
            pass
    except Exception as err:  # noqa: BLE001 - refused, unknown host, bad password: all one line
        raise StoreUnavailable(f"tracking store {uri} is not usable: {_unreachable(err) or last_line(err)}") from None
    finally:
        engine.dispose()


class GuardedClient:
    """An ``MlflowClient`` whose calls fail with one line, ``StoreUnavailable``, when the store is gone.

    A server that dies mid-run then stops the jobs cleanly (they checkpoint and exit) instead of ending
    them with MLflow's traceback; any other error passes through unchanged.
    """

    def __init__(self, client, uri: str):
        self._client, self._uri = client, uri

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - classified just below
                db = sqlite_path(self._uri)
                if db is not None and is_disk_full(err):  # SQLite: "database or disk is full"
                    raise DiskFull(db) from None
                reason = _unreachable(err)
                if reason is None:
                    raise
                what = "tracking server unreachable" if self._uri.startswith("http") else "tracking store unusable"
                raise StoreUnavailable(f"{what}: {self._uri} ({name}: {reason})") from None

        return call


class MlflowStore:
    """An MLflow tracking store: experiments, runs, and finding runs by config hash."""

    def __init__(self, uri: str | None = None, *, read_only: bool = False):
        """Open the store at ``uri`` (default: ``default_tracking_uri``), checked first (``uris``): a bad URI is
        a one-line ``ConfigError``, a store that cannot be opened a one-line ``StoreUnavailable``.
        ``read_only``: only read (the dry run), so a store in a folder this user cannot write is fine."""
        given = uri or default_tracking_uri()
        source = "--tracking-uri" if uri else "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else ""
        checked = check_tracking_uri(given, source or "default tracking store", write=not read_only)
        if checked.note:
            print(checked.note, file=sys.stderr)
        self.uri = checked.uri
        from mlflow import MlflowClient  # after the check: a bad URI is refused without importing MLflow

        # An unreachable server should fail in seconds, not after MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        db = sqlite_path(self.uri)
        if db is None or read_only:  # a reader neither creates the folder nor migrates, so it takes no lock
            if db is None and self.uri.partition(":")[0].partition("+")[0] in DATABASES:
                _reach_database(self.uri)
            self._open_guarded(MlflowClient)
            if read_only:
                self.check()
            return
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreUnavailable(f"tracking store {self.uri}: cannot create {db.parent}: {err.strerror}") from None
        # MLflow creates and migrates a new database when a client first opens it; two processes doing
        # that at once collide in the migration, so opening is one process at a time.
        from filelock import FileLock

        with FileLock(db.with_name(db.name + ".lock")):
            self._open_guarded(MlflowClient)
            self.check()

    def _open_guarded(self, client_class) -> None:
        try:
            self._open(client_class)
        except Exception as err:  # noqa: BLE001 - not a database, a newer schema, a full disk
            raise StoreUnavailable(f"tracking store {self.uri} is not usable: {last_line(err)}") from None

    def _open(self, client_class) -> None:
        self._raw = client_class(tracking_uri=self.uri)  # for sqlite this opens (and creates) the database
        self.client = GuardedClient(self._raw, self.uri)

    def check(self) -> None:
        """Fail fast, with one line, when the store cannot be reached or written."""
        try:
            self._raw.search_experiments(max_results=1)
        except Exception as err:  # noqa: BLE001 - sqlalchemy, HTTP and OS errors alike
            server = self.uri.startswith(("http://", "https://"))
            reason = (server and not_mlflow(self.uri)) or _unreachable(err) or last_line(err)
            raise StoreUnavailable(f"tracking store {self.uri} is not usable: {reason}") from None

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if EXPERIMENT_KIND not in exp.tags:  # made by older harness code: open it on its runs too
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, CUSTOM_MODEL_DEVELOPMENT)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # artifacts beside the database, whatever the working directory
            location = (
                (REPO / "mlruns" / "artifacts" / name).as_uri()
                if self.uri == default_tracking_uri()
                else (Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts" / name).as_uri()
            )
        try:
            return self.client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND: CUSTOM_MODEL_DEVELOPMENT}
            )
        except Exception:  # another process created it between our two calls
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def share_arms_view(self, experiment_id: str, axes: list[str], label: str | None = None) -> None:
        """Save the runs page's view that compares arms (``mlflow_ui.arms_view``), opened by ``arms_view_url``:
        the subset of MLflow's own view state that its "share view" button writes. ``label``: the setting
        whose final metrics are the columns (the spec's first)."""
        self.client.set_experiment_tag(experiment_id, SHARED_VIEW + ARMS_VIEW, json.dumps(arms_view(axes, label)))

    def start_run(
        self,
        experiment_id: str,
        name: str,
        tags: dict[str, Any],
        parent: str | None = None,
        started: float | None = None,
    ) -> MlflowTracker:
        """``started``: when the work the run records began (``time.time()``), where it began before the run
        could be created; the run's wall time (end - start) is then that work's."""
        tags = {k: str(v) for k, v in tags.items()}
        if parent:
            tags[PARENT] = parent
        start_time = round(started * 1000) if started is not None else None
        run = self.client.create_run(experiment_id, start_time=start_time, tags=tags, run_name=name)
        return MlflowTracker(self.client, run.info.run_id)

    def resume_run(self, run_id: str) -> MlflowTracker:
        self.client.update_run(run_id, status="RUNNING")
        return MlflowTracker(self.client, run_id)

    def log_file(self, run_id: str, path: str | Path, artifact_dir: str | None = None) -> None:
        """Log a local file to the run's artifacts (under ``artifact_dir``), whichever store holds them."""
        self.client.log_artifact(run_id, str(path), artifact_dir)

    def artifacts(self, run_id: str, folder: str) -> list[str]:
        """Paths of the files directly in the run's artifact ``folder`` (none if there is no such folder)."""
        return [f.path for f in self.client.list_artifacts(run_id, folder) if not f.is_dir]

    def download(self, run_id: str, artifact: str, dest: str | Path) -> Path | None:
        """The run's artifact file ``artifact`` copied to the local file ``dest``, or None if the run has none.

        The file appears at ``dest`` complete or not at all (downloaded beside it, then renamed), so a
        killed download never leaves a truncated file for a cache to trust.
        """
        import tempfile

        folder, _, name = artifact.rpartition("/")
        if artifact not in self.artifacts(run_id, folder):
            return None
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
            got = self.client.download_artifacts(run_id, artifact, tmp)
            os.replace(got, dest)
        return dest

    def runs(self, experiment_id: str, tags: dict[str, str]) -> list:
        """Runs of the experiment whose tags equal ``tags``, newest first."""
        clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        return list(
            self.client.search_runs(
                [experiment_id], " and ".join(clauses), max_results=5000, order_by=["attributes.start_time DESC"]
            )
        )


def existing_store(uri: str | None) -> MlflowStore | None:
    """The store at ``uri`` if it exists already, else None: a dry run reads a store but never creates one,
    and reads one it cannot write (opened ``read_only``)."""
    from urllib.parse import urlparse

    given = uri or default_tracking_uri()
    check_tracking_uri(given, "--tracking-uri" if uri else "MLFLOW_TRACKING_URI", write=False)  # garbage: one line
    db = sqlite_path(given)
    if db is not None:
        exists = db.is_file()
    elif given.startswith("file:") or "://" not in given:  # MLflow's file store: a folder
        exists = Path(urlparse(given).path if given.startswith("file:") else given).is_dir()
    else:  # a tracking server (http, databases): reading it creates nothing
        exists = True
    return MlflowStore(uri, read_only=True) if exists else None
