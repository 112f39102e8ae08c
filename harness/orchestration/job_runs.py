"""What a job records in MLflow: its runs' tags and names, its environment and data set, its evaluations,
and the closing of runs that a dead, stopped or restarted job left RUNNING."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..config.schema import (
    ARM,
    CODE_VERSION,
    COMMIT,
    CONSTANT_METRICS,
    ENV,
    FEATURE_FINGERPRINT,
    FID_INCEPTION_UNAVAILABLE,
    HASH,
    RECOGNIZER_FINGERPRINT,
    ROLE,
    SEED,
    SPEC,
    STOPPED,
    eval_key,
)
from ..result import EvalResult
from .environment import environment
from .provenance import git_state
from .store import lock_held, lock_path, store_root
from .tracking import MlflowStore, MlflowTracker

if TYPE_CHECKING:
    from .jobs import Task


def run_tags(task: Task, role: str, h: str) -> dict[str, Any]:
    """The tags every training and evaluation run of a job carries (what it is, and which code made it)."""
    return {
        ROLE: role,
        HASH: h,
        SPEC: task.spec_name,
        COMMIT: git_state()[0],
        CODE_VERSION: task.code.of(role),
        ARM: json.dumps(task.arm),  # JSON, not "k=v" text: a list value holds ", " too
        SEED: task.seed,
        **task.tags,
    }


def run_name(arm: dict[str, Any], seed: int) -> str:
    """A training run's name in the MLflow UI, ``<arm> seed=<n>``: ``diffusion.schedule=cosine seed=1``."""
    return f"{' '.join(f'{k}={v}' for k, v in arm.items()) or 'base'} seed={seed}"


def log_dataset(tracker: MlflowTracker, config: Config, data) -> None:
    """The training data as an MLflow dataset input: its name, its content fingerprint, where it was read."""
    source = str(Path(config.data.root).expanduser().resolve())
    tracker.log_dataset(data.name, data.fingerprint, source, context="train")


def log_environment(tracker: MlflowTracker, device) -> None:
    """The environment record as ``env.*`` tags (columns in the UI) and ``environment.json``."""
    record = environment(device)
    tracker.set_tags({ENV + k: v for k, v in record.items()})
    tracker.log_dict(record, "environment.json")


def log_final_on_training_run(store: MlflowStore, run_id: str, result: EvalResult) -> None:
    """A setting evaluated after training: its final metrics also on the training run, at the last step.

    The training loop logs ``eval/<label>/<metric>`` for the settings it evaluates; a setting added
    later would exist only on its evaluation run, and MLflow's charts over training runs would miss it.
    """
    step = result.step
    metrics = {eval_key(result.label, k): v for k, v in result.metrics.items()}
    first = next((eval_key(result.label, k) for k in result.metrics if k not in CONSTANT_METRICS), None)
    # One batch writes them all: a launch that died before its evaluation run finished may have logged
    # them already, and a second value at the same step would draw the curve's end twice.
    if first is None or any(m.step == step for m in store.client.get_metric_history(run_id, first)):
        return
    MlflowTracker(store.client, run_id).log_metrics(metrics, step=step)


def log_eval(
    store: MlflowStore,
    task: Task,
    train_run_id: str,
    h: str,
    result: EvalResult,
    features: dict,
    started: float | None = None,
) -> None:
    """``started``: when an evaluation made after training began, so its run's wall time is its compute; None
    for one made at the end of training, whose time the training run's wall time already holds."""
    child = store.start_run(
        task.experiment_id,
        f"{run_name(task.arm, task.seed)} {result.label}",
        parent=train_run_id,
        tags={**run_tags(task, "eval", h), **features},  # features: the fingerprints of the classifiers it used
        started=started,
    )
    child.log_params(result.setting.model_dump())
    child.log_metrics(result.metrics, step=result.step)
    if "fid_inception" in result.unavailable:
        child.set_tags({FID_INCEPTION_UNAVAILABLE: result.unavailable["fid_inception"]})
    child.finish("FINISHED")


def restart_run(store: MlflowStore, run_id: str) -> None:
    """End KILLED a training run that cannot be resumed because its checkpoint was moved aside unreadable; the
    job trains again from step 0 in a new run, so no step is logged twice in one run. Called under the job's lock."""
    why = "its checkpoint was unreadable (moved aside): retrained from step 0 in a new run"
    MlflowTracker(store.client, run_id).set_tags({STOPPED: why})
    store.client.set_terminated(run_id, status="KILLED")


def close_stale_evals(store: MlflowStore, experiment_id: str, config_hash: str) -> None:
    """Mark KILLED the evaluation runs of ``config_hash`` left RUNNING by a job that died or lost its store.

    Called under the job's lock: no live process is evaluating this hash.
    """
    for run in store.runs(experiment_id, {ROLE: "eval", HASH: config_hash}):
        if run.info.status == "RUNNING":
            store.client.set_terminated(run.info.run_id, status="KILLED")


def close_killed_job(store: MlflowStore, experiment_id: str, config_hash: str, why: str) -> None:
    """Mark KILLED the runs of a job whose worker the launcher killed (the grace ran out, a second Ctrl-C).

    A job lock still held means a live process (another launch) is running this hash: its runs are left alone.
    """
    if lock_held(lock_path(store_root(store.uri), config_hash)):
        return
    for run in store.runs(experiment_id, {ROLE: "train", HASH: config_hash}):
        if run.info.status == "RUNNING":
            MlflowTracker(store.client, run.info.run_id).set_tags({STOPPED: why})
            store.client.set_terminated(run.info.run_id, status="KILLED")
    close_stale_evals(store, experiment_id, config_hash)


def feature_tags(evaluator) -> dict[str, str]:
    """The fingerprints of the classifiers an evaluator scores with: FIDs compare only where they are equal."""
    return {
        FEATURE_FINGERPRINT: evaluator.classifier.fingerprint,
        RECOGNIZER_FINGERPRINT: evaluator.recognizer.fingerprint,
    }
