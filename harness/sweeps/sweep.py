"""Hyperparameter sweeps: "what is the best this design can do under a budget of N steps?"

A sweep spec (``search.py``) is an ablation spec without ``axes`` plus a ``search`` section: the
distributions to sample per dotted key (``space.py``), the objective metric(s), ``n_trials``, the sampler,
the pruner and a seed. Each Optuna trial (``objective.py``) samples a point, resolves it into a training
configuration, trains it with ``training.train`` (evaluating every ``train.eval_every`` steps with the
spec's first evaluation setting, which the pruner watches) and returns that setting's metric at the final
evaluation. Only this package imports optuna.

Keys under ``eval.`` (``eval.guidance``, ``eval.steps``, ...) set a field of that evaluation setting,
not of the training configuration: they leave the config hash unchanged, so trials that differ only
in them share one trained model (``<store root>/checkpoints/<spec name>/<config hash>``) and only
sample anew.

Workers (``workers.py``: local processes or a Slurm job array) all pull trials from one Optuna storage
(``study.py``): by default a journal file ``<store root>/optuna/<spec name>.log`` (processes on one
machine), or any RDB URL (``postgresql://...``) for workers on several machines, with heartbeats. Running
a sweep again continues its study until it holds ``n_trials`` COMPLETE or PRUNED trials. This module runs
the whole sweep: the parent run, the workers, and the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from .. import stop
from ..config import (
    ConfigError,
)
from ..config.schema import CONFIRM_RANK, PARENT, ROLE, SEED, TRIAL
from ..errors import last_line
from ..orchestration.runner import refuse_local_stores, sqlite_tracking_store, stopping
from ..orchestration.store import shared_classifiers, store_root
from ..orchestration.tracking import MlflowStore, MlflowTracker, default_tracking_uri
from ..private import SUBMITIT_READS, private_dir
from ..tracker import StoreUnavailable
from .confirm import confirm_jobs, confirm_runs
from .objective import WorkerTask
from .search import Sweep, load_sweep
from .study import counts, create_study, finish_study, local_storage, open_parent, open_storage, storage_label
from .workers import WorkerReport, run_local, run_slurm

# -- the whole sweep ------------------------------------------------------------------------------------


@dataclass
class TrialRecord:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    values: list[float] | None
    params: dict[str, Any]
    config_hash: str | None
    run_id: str | None  # the trial's MLflow child run


@dataclass
class Confirmed:
    trial: int
    rank: int  # in the search, 1 = best
    seed: int
    values: list[float]  # per objective metric, at the final step
    run_id: str


@dataclass
class SweepResult:
    study_name: str
    storage: str  # the journal file or the RDB URL (without password)
    parent_run_id: str
    n_trials: int  # the target: COMPLETE + PRUNED trials
    objective: list[tuple[str, str]]  # (metric, direction)
    trials: list[TrialRecord]
    best: list[TrialRecord]  # the best trial; for several objectives the Pareto front
    workers: list[WorkerReport] = field(default_factory=list)  # which trials each worker ran
    confirmed: list[Confirmed] = field(default_factory=list)  # by rank, then seed

    @property
    def worker_errors(self) -> list[str]:
        return [w.error for w in self.workers if w.error]

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    @property
    def finished(self) -> int:
        return sum(t.state in ("COMPLETE", "PRUNED") for t in self.trials)

    @property
    def ok(self) -> bool:
        return self.finished >= self.n_trials and not self.worker_errors


def _record(t: FrozenTrial, runs: dict[int, str]) -> TrialRecord:
    return TrialRecord(
        t.number,
        t.state.name,
        list(t.values) if t.values else None,
        dict(t.params),
        t.user_attrs.get("config_hash"),
        runs.get(t.number),
    )


def _confirm(study, sweep: Sweep, tasks: list[WorkerTask], executor: str, root, cluster, store) -> list[WorkerReport]:
    """Train the confirmation jobs on the same workers (local processes or the Slurm array), round-robin."""
    jobs = confirm_jobs(study, sweep)
    current = {(j.trial, j.seed) for j in jobs}
    for run in confirm_runs(store, tasks[0].experiment_id, sweep.study_name):
        if (int(run.data.tags[TRIAL]), int(run.data.tags[SEED])) not in current:  # no longer among the top
            MlflowTracker(store.client, run.info.run_id).set_tags({CONFIRM_RANK: "-"})
    if not jobs:
        return []
    top = sorted({(j.rank, j.trial) for j in jobs})
    print(
        f"{sweep.study_name}: confirming the {len(top)} best trial(s) ("
        + ", ".join(f"{t}" for _, t in top)
        + f") with fresh seeds {sweep.search.confirm.seeds}",
        flush=True,
    )
    shares = [replace(t, confirm=jobs[i :: len(tasks)]) for i, t in enumerate(tasks)]
    shares = [t for t in shares if t.confirm]
    if executor == "slurm":
        folder = private_dir(root / "slurm" / f"{sweep.study_name}-confirm", SUBMITIT_READS)
        return run_slurm(shares, sweep.spec.slurm, folder, cluster)
    return run_local(shares)


def _confirmed(store: MlflowStore, experiment_id: str, sweep: Sweep) -> list[Confirmed]:
    """The finished confirmation runs of the study that are among its current top trials."""
    out = []
    for run in confirm_runs(store, experiment_id, sweep.study_name):
        rank = run.data.tags.get(CONFIRM_RANK, "-")
        if run.info.status != "FINISHED" or not rank.isdigit():
            continue
        # The objective as its evaluation run logged it (the config has one setting, so one evaluation).
        evals = [
            e for e in store.runs(experiment_id, {ROLE: "eval", PARENT: run.info.run_id}) if e.info.status == "FINISHED"
        ]
        metrics = evals[0].data.metrics if evals else {}
        values = [metrics.get(o.metric, float("nan")) for o in sweep.search.objective]
        out.append(Confirmed(int(run.data.tags[TRIAL]), int(rank), int(run.data.tags[SEED]), values, run.info.run_id))
    return sorted(out, key=lambda c: (c.rank, c.seed))


def _open_storage(storage: str | None, root: Path, spec_name: str, where: str) -> optuna.storages.BaseStorage:
    try:
        return open_storage(storage, root, spec_name)
    except Exception as err:  # noqa: BLE001 - sqlalchemy and OS errors alike
        raise StoreUnavailable(f"optuna storage {where} is not usable: {last_line(err)}") from None


def preflight(sweep: Sweep, store: MlflowStore | None = None):
    """Load the data set (a missing one fails here, in one line) and, given the store, get its domain
    classifiers once before the workers start: the server's, as every ablation on this data uses
    (``orchestration.store.shared_classifiers``), so trials and ablations score FID in one feature space."""
    from ..evaluation.evaluate import default_cache_dir
    from ..training.data import load_dataset

    data = sweep.base["data"]
    images = load_dataset(data["dataset"], data["root"], data["download"])
    if store is not None:
        shared_classifiers(store, images, default_cache_dir())


def run_sweep(
    spec_path: str | Path,
    *,
    profile: str | None = None,
    workers: int = 1,
    storage: str | None = None,
    executor: str = "local",
    tracking_uri: str | None = None,
    overrides: dict[str, Any] | None = None,
    cluster: str | None = None,
    allow_local_store: bool = False,
) -> SweepResult:
    """Run (or continue) the sweep until its study holds ``n_trials`` COMPLETE or PRUNED trials.

    ``workers`` processes pull trials from one storage (``storage``: journal file path or RDB URL;
    default ``<store root>/optuna/<spec name>.log``); ``executor='slurm'`` runs them as a submitit job
    array (``cluster='debug'`` runs them in this process, for tests); it refuses stores kept in local files
    unless ``allow_local_store`` (see ``orchestration.runner.refuse_local_stores``).
    """
    if executor not in ("local", "slurm"):
        raise ConfigError(f"--executor {executor!r}: valid: local, slurm")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: at least 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each worker prints its own line per trial
    spec_path = str(spec_path)
    overrides = dict(overrides or {})
    sweep = load_sweep(spec_path, profile, overrides)
    uri = tracking_uri or default_tracking_uri()
    local = {**sqlite_tracking_store(uri), **local_storage(storage, store_root(uri), sweep.spec.name)}
    refuse_local_stores(executor, local, allow_local_store)
    preflight(sweep)  # before anything is tracked: a missing data set fails here, in one line
    root = store_root(uri)
    where = storage_label(storage, root, sweep.spec.name)
    # A database URL is opened before the tracking store is touched, so that a typo in it writes nothing; a
    # journal file (its folder made on opening) waits until the tracking store has proved usable.
    optuna_storage = _open_storage(storage, root, sweep.spec.name, where) if storage and "://" in storage else None
    store = MlflowStore(tracking_uri)
    store.check()
    preflight(sweep, store)  # the classifiers, before the workers
    optuna_storage = optuna_storage or _open_storage(storage, root, sweep.spec.name, where)
    study = create_study(sweep, optuna_storage)
    experiment_id = store.experiment_id(sweep.spec.name)
    parent = open_parent(store, experiment_id, sweep, root, spec_path, where)

    devices: list[str | None] = [None] * workers
    threads = 0
    if executor == "local" and workers > 1:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = [f"cuda:{i % gpus}" for i in range(workers)] if gpus else devices
        threads = max(1, (os.cpu_count() or 1) // workers)  # the CPU's cores divided between the workers
    tasks = [
        WorkerTask(
            spec_path,
            profile,
            overrides,
            storage,
            store.uri,
            experiment_id,
            parent.run_id,
            worker=i,
            threads=threads,
            device=devices[i],
        )
        for i in range(workers)
    ]
    print(
        f"{sweep.study_name}: {sweep.search.n_trials} trials ({sweep.search.sampler_name}, pruner "
        f"{sweep.search.pruner_name if sweep.pruning else 'none'}), {workers} worker(s); study in {where}; "
        f"{counts(study)['COMPLETE'] + counts(study)['PRUNED']} finished so far",
        flush=True,
    )
    try:
        # As in an ablation: the first Ctrl-C or SIGTERM starts no new trial and stops the running ones at a
        # step (checkpointed, enqueued again); a second one stops at once.
        serial = executor != "slurm" and len(tasks) == 1
        with stop.launcher_signals(on_first=stopping, grace=stop.GRACE_SECONDS if serial else None):
            if executor == "slurm":
                reports = run_slurm(
                    tasks, sweep.spec.slurm, private_dir(root / "slurm" / sweep.study_name, SUBMITIT_READS), cluster
                )
            else:
                reports = run_local(tasks)
            study = optuna.load_study(study_name=sweep.study_name, storage=optuna_storage)
            if sweep.search.confirm is not None and not any(r.error for r in reports) and not stop.requested():
                reports += _confirm(study, sweep, tasks, executor, root, cluster, store)
        if stop.requested():
            raise stop.Interrupted(
                f"interrupted: {sweep.study_name} stopped with {counts(study)['COMPLETE']} complete trial(s); parent "
                f"run {parent.run_id} KILLED; run the same command again: stopped trials resume from their checkpoints"
            )
    except BaseException:
        parent.finish("KILLED")
        raise
    runs, best = finish_study(store, experiment_id, study, sweep, parent)
    trials = [_record(t, runs) for t in study.get_trials(deepcopy=False)]
    result = SweepResult(
        sweep.study_name,
        where,
        parent.run_id,
        sweep.search.n_trials,
        [(o.metric, d) for o, d in zip(sweep.search.objective, sweep.directions)],
        trials,
        [trials[n] for n in best],
        reports,
        _confirmed(store, experiment_id, sweep),
    )
    parent.finish("FINISHED" if result.ok else "FAILED")
    return result
