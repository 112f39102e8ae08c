"""Workers that pull trials from the shared study: in this process, in spawned processes, or as a Slurm
job array (submitit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import stop
from ..orchestration.executors import array_result, run_each, submit_array
from ..orchestration.store import hold_lock, store_root
from ..orchestration.tracking import MlflowStore
from .confirm import run_confirmation
from .objective import TrialObjective, WorkerTask, worker_name
from .search import Sweep, load_sweep
from .study import counts, open_storage, recover_dead_trials

MAX_FAILURES_IN_A_ROW = 3  # a worker whose trials keep raising stops: that is a bug, not a hyperparameter


@dataclass
class WorkerReport:
    worker: int
    trials: list[int] = field(default_factory=list)  # numbers of the trials this worker ran
    error: str | None = None
    name: str = ""  # host:pid, as in the trials' harness.worker tag
    confirmed: list[list[int]] = field(default_factory=list)  # [trial, seed] of each confirmation it trained


def run_worker(task: WorkerTask) -> WorkerReport:
    """Pull trials from the shared study until it holds ``n_trials`` finished (or running) ones."""
    if task.threads:
        import torch

        torch.set_num_threads(task.threads)
    sweep = load_sweep(task.spec_path, task.profile, task.overrides)
    store = MlflowStore(task.tracking_uri)
    root = store_root(store.uri)
    if task.confirm:
        return _confirm_worker(task, sweep, store, root)
    storage = open_storage(task.storage, root, sweep.spec.name)
    n_existing = len(optuna.load_study(study_name=sweep.study_name, storage=storage).get_trials(deepcopy=False))
    study = optuna.load_study(
        study_name=sweep.study_name,
        storage=storage,
        sampler=sweep.sampler(task.worker, n_existing),
        pruner=sweep.pruner(),
    )
    objective = TrialObjective(sweep, task, store, root)
    report, failures = WorkerReport(task.worker, name=worker_name()), 0
    while not stop.requested():  # after a Ctrl-C or SIGTERM no trial starts
        # The claim serializes, among this machine's workers, the dead-trial check, the count and the
        # ask, so the study never holds more than n_trials finished or running trials.
        objective.claim = hold_lock(root, f"sweep-{sweep.study_name}")
        ran_before = len(objective.ran)
        try:
            recover_dead_trials(study, storage, root)
            c = counts(study)
            if c["COMPLETE"] + c["PRUNED"] + c["RUNNING"] >= sweep.search.n_trials:
                break
            study.optimize(
                objective, n_trials=1, catch=(Exception,), callbacks=[objective.release], gc_after_trial=True
            )
        except KeyboardInterrupt as err:  # stopped in a trial: it is enqueued again (objective) for the rerun
            report.error = f"stopped in trial {objective.ran[-1] if objective.ran else '?'}: {err or 'interrupted'}"
            break
        finally:
            objective.release()
        if len(objective.ran) == ran_before:  # Optuna stopped before the objective (a sampler's study.stop())
            report.error = "the sampler stopped the study"
            break
        trial = study.get_trials(deepcopy=False)[objective.ran[-1]]
        print(
            _trial_line(sweep, trial) + (f"  ({objective.last_error})" if trial.state == TrialState.FAIL else ""),
            flush=True,
        )
        failures = failures + 1 if trial.state == TrialState.FAIL else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            report.error = f"{failures} trials in a row failed; the last: {objective.last_error}"
            break
    if stop.requested() and not report.error:
        report.error = "stopped before its next trial"
    report.trials = list(objective.ran)
    return report


def _confirm_worker(task: WorkerTask, sweep: Sweep, store: MlflowStore, root: Path) -> WorkerReport:
    """Train this worker's share of the confirmation jobs; a failure is reported and the next job runs."""
    objective = TrialObjective(sweep, task, store, root)  # for its data set cache
    report, errors = WorkerReport(task.worker, name=worker_name()), []
    for job in task.confirm:
        if stop.requested():
            errors.append("stopped before its next confirmation")
            break
        config = sweep.resolve(job.params, seed=job.seed)
        try:
            result = run_confirmation(job, sweep, task, store, root, objective._dataset(config))
        except Exception as err:  # noqa: BLE001 - the other confirmations still run
            errors.append(f"trial {job.trial} seed {job.seed}: {type(err).__name__}: {err}")
            print(
                f"[{sweep.study_name}] confirm trial {job.trial:>3} seed {job.seed}  FAILED  {errors[-1]}", flush=True
            )
            continue
        report.confirmed.append([job.trial, job.seed])
        values = (
            "reused"
            if result is None
            else "  ".join(
                f"{o.metric}={result.metrics.get(o.metric, float('nan')):.4g}" for o in sweep.search.objective
            )
        )
        print(f"[{sweep.study_name}] confirm trial {job.trial:>3} seed {job.seed}  {values}", flush=True)
    report.error = "; ".join(errors) or None
    return report


def _trial_line(sweep: Sweep, t: FrozenTrial) -> str:
    values = "  ".join(f"{o.metric}={v:.4g}" for o, v in zip(sweep.search.objective, t.values or []))
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
    return f"[{sweep.study_name}] trial {t.number:>3} {t.state.name:>8}  {values}  {params}"


def _process_worker(task: WorkerTask) -> WorkerReport:
    """A worker in a process of its own: Optuna's per-trial log lines would repeat ours."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return run_worker(task)


def run_local(tasks: list[WorkerTask]) -> list[WorkerReport]:
    """Each worker in a spawned process of its own (one in this process), pulling from the shared study."""
    if len(tasks) == 1:  # in this process: what it raises (bad input, a lost store) reaches the CLI as such
        return [run_worker(tasks[0])]
    results = run_each(_process_worker, tasks)
    return [_report(t, r, "its trial is retried by the next run") for t, r in zip(tasks, results)]


def run_slurm(tasks: list[WorkerTask], params: dict[str, Any], folder: Path, cluster: str | None) -> list[WorkerReport]:
    """The workers as one Slurm job array."""
    jobs = submit_array(_process_worker, tasks, params, folder, cluster)
    return [_report(t, array_result(j), "") for t, j in zip(tasks, jobs)]


def _report(task: WorkerTask, result, after_death: str) -> WorkerReport:
    if not isinstance(result, Exception):
        return result
    error = f"worker {result}" if str(result).startswith("died") else str(result)
    return WorkerReport(task.worker, error=error + (f"; {after_death}" if after_death and "died" in error else ""))
