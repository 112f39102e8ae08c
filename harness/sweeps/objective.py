"""One trial: sample a point, resolve it into one training configuration per seed, train each with pruning
on the running aggregate, score the trial by the aggregate over seeds. MLflow: one run per trial (role
``trial``, a child of the sweep's parent), one child of it per seed (role ``trial_seed``)."""

from __future__ import annotations

import os
import socket
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ..config import Config
from ..config.schema import (
    CODE_VERSION,
    COMMIT,
    ERROR,
    HASH,
    RETRY_OF,
    ROLE,
    SPEC,
    STOPPED,
    STUDY,
    TRIAL,
    TRIAL_STATE,
    WORKER,
    spread_key,
)
from ..config.space import FloatParam, IntParam
from ..orchestration.jobs import Task, run_job
from ..orchestration.mlflow_ui import run_url, ui_server
from ..orchestration.provenance import code_version, git_state
from ..orchestration.store import hold_lock, lock_path
from ..orchestration.tracking import MlflowStore, MlflowTracker
from ..result import EvalResult
from .search import Sweep
from .study import enqueue_again, trial_lock_name

# -- one trial ------------------------------------------------------------------------------------------


def aggregate(values: list[float], how: str) -> float:
    return statistics.median(values) if how == "median" else statistics.fmean(values)


class PruningEvaluator:
    """Wraps ``evaluation.Evaluator`` for seed ``index`` of a trial: reports the running aggregate of the
    objective metric (this seed's value with the earlier seeds' at the same step) to the trial at
    ``Sweep.prune_step`` and raises ``optuna.TrialPruned`` when the pruner says stop (``train`` propagates it).
    """

    def __init__(self, inner, trial: optuna.Trial, metric: str | None, sweep: Sweep, index: int, history):
        self.inner, self.trial, self.metric, self.sweep, self.index = inner, trial, metric, sweep, index
        self.history: dict[int, list[float]] = history  # step -> the objective at that step, per seed so far

    @property
    def classifier_accuracy(self) -> float:
        return self.inner.classifier_accuracy

    @property
    def space(self):  # data.space latent: the autoencoder training encodes with (training.train.Evaluation)
        return self.inner.space

    def run(self, model, *, step: int, tracker=None, final: bool | None = None) -> list[EvalResult]:
        results = self.inner.run(model, step=step, tracker=tracker, final=final)
        result = results[0]  # a trial's config has one evaluation setting
        value = result.metrics.get(self.metric) if self.metric is not None else None
        if value is not None:
            seen = self.history.setdefault(step, [])
            seen.append(float(value))
            running = aggregate(seen, self.sweep.search.aggregate)
            at = self.sweep.prune_step(self.index, step)
            self.trial.report(running, at)
            if at < self.sweep.final_steps and self.trial.should_prune():
                raise optuna.TrialPruned(
                    f"{self.metric} {running:.4g} at step {step} of seed {self.sweep.seeds[self.index]}"
                    + (f" (the {self.sweep.search.aggregate} over {len(seen)} seeds)" if len(seen) > 1 else "")
                )
        return results


@dataclass
class WorkerTask:
    """Everything a worker process needs (picklable)."""

    spec_path: str
    profile: str | None
    overrides: dict[str, Any]
    storage: str | None
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    worker: int = 0
    threads: int = 0  # torch threads; 0 leaves the process's setting alone
    device: str | None = None  # e.g. cuda:1; None: the configuration's train.device
    confirm: list = field(default_factory=list)  # confirm.ConfirmJob: run these instead of pulling trials


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TrialObjective:
    """The Optuna objective: sample, resolve, train (with pruning), score; one MLflow child run per trial."""

    def __init__(self, sweep: Sweep, task: WorkerTask, store: MlflowStore, root: Path):
        self.sweep, self.task, self.store, self.root = sweep, task, store, root
        self.claim = None  # the study's claim lock, held from the count through study.ask()
        self.trial_lock = None  # held while this process runs the trial, released after Optuna's tell
        self.trial_lock_path: Path | None = None
        self.last_error: str | None = None
        self.ran: list[int] = []  # trial numbers this process ran
        self._data: dict[tuple, Any] = {}

    def release(self, *_) -> None:
        """Let go of both locks (also an Optuna callback: it runs after the trial's state is told)."""
        if self.claim is not None:
            self.claim.release()
            self.claim = None
        if self.trial_lock is not None:
            self.trial_lock_path.unlink(missing_ok=True)
            self.trial_lock.release()
            self.trial_lock = None

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        name = trial_lock_name(self.sweep.study_name, trial.number)
        self.trial_lock, self.trial_lock_path = hold_lock(self.root, name), lock_path(self.root, name)
        self.claim.release()  # only now: until here a dead-worker check could mistake this trial for orphaned
        self.claim = None
        self.ran.append(trial.number)
        self.last_error = None
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as err:
            self.last_error = f"{type(err).__name__}: {err}"
            raise

    def _run(self, trial: optuna.Trial) -> float | list[float]:
        from ..training.train import NonFiniteLoss

        sweep = self.sweep
        params = {key: self._suggest(trial, key, p) for key, p in sweep.params.items()}
        configs = [measured(sweep.resolve(params, device=self.task.device, seed=seed)) for seed in sweep.seeds]
        hashes = [c.train_hash() for c in configs]
        trial.set_user_attr("config_hash", hashes[0])
        trial.set_user_attr("config_hashes", hashes)
        retried = trial.study.get_trials(deepcopy=False)[trial.number].system_attrs.get("failed_trial")
        run = self.store.start_run(
            self.task.experiment_id,
            f"{sweep.study_name}-trial-{trial.number}",
            parent=self.task.parent_run_id,
            tags={
                **study_tags(sweep, "trial", hashes[0]),
                TRIAL: trial.number,
                TRIAL_STATE: "RUNNING",
                WORKER: worker_name(),
                RETRY_OF: "-" if retried is None else retried,
            },
        )
        trial.set_user_attr("mlflow_run_id", run.run_id)
        # optuna-dashboard lists a trial's user attrs: the link opens the run in MLflow's UI.
        link = run_url(ui_server(self.task.tracking_uri), self.task.experiment_id, run.run_id)
        trial.set_user_attr("mlflow_run", link)
        run.log_params({**params, "trial": trial.number})
        run.log_dict(configs[0].to_dict(), "config.json")
        try:
            finals = self._train_seeds(trial, configs, run)
        except optuna.TrialPruned as err:
            end_run(run, "PRUNED", str(err))
            raise
        except NonFiniteLoss as err:
            # Diverged: recorded as pruned (stopped early, no value), so TPE ranks the point last
            # instead of ignoring it as it ignores FAIL trials.
            end_run(run, "PRUNED", str(err))
            raise optuna.TrialPruned(str(err)) from None
        except Exception as err:
            end_run(run, "FAIL", f"{type(err).__name__}: {err}")
            raise
        except KeyboardInterrupt as err:  # Ctrl-C / SIGTERM: Optuna records FAIL; a copy resumes on the rerun
            end_run(run, "FAIL", f"stopped: {err or 'interrupted'}; the rerun resumes it", status="KILLED")
            enqueue_again(trial.study, trial.study.get_trials(deepcopy=True)[trial.number])
            raise
        values = []
        for o in sweep.search.objective:
            per_seed = [objective_value(f, o.metric) for f in finals]
            values.append(aggregate(per_seed, sweep.search.aggregate))
            run.log_metrics({f"seed/{s}/{o.metric}": v for s, v in zip(sweep.seeds, per_seed)})
            if len(per_seed) > 1:
                run.log_metrics({spread_key(o.metric): statistics.stdev(per_seed)}, step=configs[0].train.steps)
        run.log_metrics({o.metric: v for o, v in zip(sweep.search.objective, values)}, step=configs[0].train.steps)
        run.log_metrics({"n_seeds": len(finals)})
        end_run(run, "COMPLETE")
        return values if sweep.multi_objective else values[0]

    @staticmethod
    def _suggest(trial: optuna.Trial, key: str, p) -> Any:
        if isinstance(p, FloatParam):
            return trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        if isinstance(p, IntParam):
            return trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)
        return trial.suggest_categorical(key, p.choices)

    def _dataset(self, config: Config):
        from ..training.data import load_dataset

        key = (config.data.dataset, config.data.root, config.data.download)
        if key not in self._data:
            self._data[key] = load_dataset(*key)
        return self._data[key]

    def _train_seeds(self, trial: optuna.Trial, configs: list[Config], run: MlflowTracker) -> list[EvalResult]:
        """Each seed's model, one after the other, as a job below the trial's run (``run_job``: the same
        training and evaluation runs as an ablation's); their final evaluations."""
        from ..training.train import NonFiniteLoss

        metric = self.sweep.search.objective[0].metric if self.sweep.pruning else None
        history: dict[int, list[float]] = {}
        finals = []
        for index, config in enumerate(configs):

            def scorer(evaluator, index=index):
                return PruningEvaluator(evaluator, trial, metric, self.sweep, index, history)

            task = sweep_task(self.sweep, self.task, config, trial.params, run.run_id, {TRIAL: trial.number})
            out = run_job(
                task, config, data=self._dataset(config), wrap=scorer, stopped=(optuna.TrialPruned, NonFiniteLoss)
            )
            finals.append(out.evals[0])  # a trial's config has one evaluation setting
        return finals


def sweep_task(sweep: Sweep, task: WorkerTask, config: Config, params: dict, parent: str, tags: dict) -> Task:
    """The job of one seed of a point: its params are its arm, the study and ``tags`` mark it as the sweep's."""
    return Task(
        config.model_dump_json(),
        dict(params),
        config.train.seed,
        sweep.spec.name,
        task.experiment_id,
        parent,
        task.tracking_uri,
        threads=0,
        tags={STUDY: sweep.study_name, **tags},
    )


def study_tags(sweep: Sweep, role: str, config_hash: str) -> dict[str, Any]:
    """The tags of every run a study makes below its parent (trial, trial_seed, confirm)."""
    return {
        ROLE: role,
        HASH: config_hash,
        SPEC: sweep.spec.name,
        COMMIT: git_state()[0],
        CODE_VERSION: code_version().eval,
        STUDY: sweep.study_name,
    }


def end_run(run: MlflowTracker, state: str, reason: str | None = None, status: str | None = None) -> None:
    """End a trial's run: ``state`` is Optuna's, ``status`` MLflow's (by default from the state)."""
    tags = {TRIAL_STATE: state}
    if reason:
        tags[STOPPED if status == "KILLED" or state != "FAIL" else ERROR] = reason[:5000]
    run.set_tags(tags)
    run.finish(status or ("FAILED" if state == "FAIL" else "FINISHED"))


def measured(config: Config) -> Config:
    """``config`` with ``train.precision`` / ``memory_format`` auto measured on this worker (training.autotune;
    cached per model shape, so a study probes each shape once): the trial's hash names the precision that ran."""
    from ..device import resolve_device
    from ..orchestration.placement import autotune_cache
    from ..training.autotune import resolve

    return resolve(config, resolve_device(config.train.device), autotune_cache())[0]


def objective_value(result: EvalResult, metric: str) -> float:
    if metric not in result.metrics:
        raise RuntimeError(f"objective metric {metric} is missing: {result.why_missing(metric)}")
    return float(result.metrics[metric])
