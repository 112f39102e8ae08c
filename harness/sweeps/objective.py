"""One trial: sample a point, resolve it into a training configuration, train with pruning, score it; one
MLflow child run per trial."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from ..config import (
    Config,
)
from ..orchestration.provenance import code_version, git_state
from ..orchestration.store import hold_lock, job_lock, load_ema, lock_path
from ..orchestration.tracking import MlflowStore, MlflowTracker
from ..result import EvalResult
from ..schema import (
    CODE_VERSION,
    COMMIT,
    ERROR,
    FEATURE_FINGERPRINT,
    HASH,
    RECOGNIZER_FINGERPRINT,
    RETRY_OF,
    ROLE,
    SPEC,
    STOPPED,
    STUDY,
    TRIAL,
    TRIAL_STATE,
    WORKER,
)
from .search import Sweep
from .space import FloatParam, IntParam
from .study import trial_lock_name

# -- one trial ------------------------------------------------------------------------------------------


class PruningEvaluator:
    """Wraps ``evaluation.Evaluator``: reports the objective metric of each periodic evaluation to
    the trial and raises ``optuna.TrialPruned`` when the pruner says stop (``train`` propagates it)."""

    def __init__(self, inner, trial: optuna.Trial, metric: str | None, final_step: int):
        self.inner, self.trial, self.metric, self.final_step = inner, trial, metric, final_step
        self.final: EvalResult | None = None  # the final evaluation, once it ran

    @property
    def classifier_accuracy(self) -> float:
        return self.inner.classifier_accuracy

    def run(self, model, *, step: int, tracker=None, final: bool | None = None) -> list[EvalResult]:
        results = self.inner.run(model, step=step, tracker=tracker, final=final)
        result = results[0]  # a trial's config has one evaluation setting
        if step >= self.final_step:
            self.final = result
        value = result.metrics.get(self.metric) if self.metric is not None else None
        if value is not None:
            self.trial.report(float(value), step)
            if step < self.final_step and self.trial.should_prune():
                raise optuna.TrialPruned(f"{self.metric} {value:.4g} at step {step}")
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
        config = sweep.resolve(params, device=self.task.device)
        h = config.train_hash()
        trial.set_user_attr("config_hash", h)
        commit, _ = git_state()
        retried = trial.study.get_trials(deepcopy=False)[trial.number].system_attrs.get("failed_trial")
        run = self.store.start_run(
            self.task.experiment_id,
            f"{sweep.study_name}-trial-{trial.number}",
            parent=self.task.parent_run_id,
            tags={
                ROLE: "trial",
                HASH: h,
                SPEC: sweep.spec.name,
                COMMIT: commit,
                CODE_VERSION: code_version(),
                STUDY: sweep.study_name,
                TRIAL: trial.number,
                TRIAL_STATE: "RUNNING",
                WORKER: worker_name(),
                RETRY_OF: "-" if retried is None else retried,
            },
        )
        trial.set_user_attr("mlflow_run_id", run.run_id)
        run.log_params({**params, "trial": trial.number})
        run.log_dict(config.to_dict(), "config.json")
        try:
            values = self._train_and_score(trial, config, run)
        except optuna.TrialPruned as err:
            self._end(run, "PRUNED", str(err))
            raise
        except NonFiniteLoss as err:
            # Diverged: recorded as pruned (stopped early, no value), so TPE ranks the point last
            # instead of ignoring it as it ignores FAIL trials.
            self._end(run, "PRUNED", str(err))
            raise optuna.TrialPruned(str(err)) from None
        except Exception as err:
            self._end(run, "FAIL", f"{type(err).__name__}: {err}")
            raise
        run.log_metrics({o.metric: v for o, v in zip(sweep.search.objective, values)}, step=config.train.steps)
        self._end(run, "COMPLETE")
        return values if sweep.multi_objective else values[0]

    @staticmethod
    def _suggest(trial: optuna.Trial, key: str, p) -> Any:
        if isinstance(p, FloatParam):
            return trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        if isinstance(p, IntParam):
            return trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)
        return trial.suggest_categorical(key, p.choices)

    def _end(self, run: MlflowTracker, state: str, reason: str | None = None) -> None:
        tags = {TRIAL_STATE: state}
        if reason:
            tags[ERROR if state == "FAIL" else STOPPED] = reason[:5000]
        run.set_tags(tags)
        run.finish("FAILED" if state == "FAIL" else "FINISHED")

    def _dataset(self, config: Config):
        from ..training.data import load_dataset

        key = (config.data.dataset, config.data.root, config.data.download)
        if key not in self._data:
            self._data[key] = load_dataset(*key)
        return self._data[key]

    def _train_and_score(self, trial: optuna.Trial, config: Config, run: MlflowTracker) -> list[float]:
        from ..device import resolve_device
        from ..evaluation.evaluate import Evaluator
        from ..training.train import train

        data = self._dataset(config)
        h = config.train_hash()
        run_dir = self.root / "checkpoints" / self.sweep.spec.name / h  # per experiment, as the runner's
        device = resolve_device(config.train.device)
        evaluator = Evaluator(config, data, device=device, out_dir=run_dir)
        # The feature space of this trial's FID, as on ablation runs: comparable only at equal fingerprints.
        run.set_tags(
            {
                FEATURE_FINGERPRINT: evaluator.classifier.fingerprint,
                RECOGNIZER_FINGERPRINT: evaluator.recognizer.fingerprint,
            }
        )
        metric = self.sweep.search.objective[0].metric if self.sweep.pruning else None
        scorer = PruningEvaluator(evaluator, trial, metric, config.train.steps)
        with job_lock(self.root, h):  # one trainer per config hash; a twin trial waits, then reuses the model
            train(config, run, run_dir=run_dir, data=data, evaluator=scorer, progress=False)
            if scorer.final is None:  # trained to the end by an earlier trial: only this evaluation runs
                scorer.final = evaluator.run(
                    load_ema(config, data, run_dir, device), step=config.train.steps, tracker=run, final=True
                )[0]
        values = []
        for o in self.sweep.search.objective:
            if o.metric not in scorer.final.metrics:
                raise RuntimeError(f"objective metric {o.metric} is missing: {scorer.final.why_missing(o.metric)}")
            values.append(float(scorer.final.metrics[o.metric]))
        return values
