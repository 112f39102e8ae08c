"""One job: train (or resume) a configuration and evaluate its missing settings, in a worker process.

Before anything runs, the job is classified (``job_state``): ``done`` (a finished training run with
every evaluation setting), ``evaluate`` (finished, some settings missing: they run on the saved
checkpoint), ``resume`` (an unfinished run: it continues from its checkpoint, in the same MLflow run)
or ``new``. Only runs made by the current code count unless ``reuse="any"``. A file lock per config
hash makes two launches of the same spec train each configuration once. The store's local
layout, its locks and the weights shared through the server are in ``store.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, SamplerSetting
from ..config.schema import (
    ARM,
    CHECKPOINT,
    CODE_VERSION,
    COMMIT,
    DEVICE,
    ENV,
    ERROR,
    FEATURE_FINGERPRINT,
    FID_INCEPTION_UNAVAILABLE,
    HASH,
    PARENT,
    RECOGNIZER_FINGERPRINT,
    ROLE,
    SEED,
    SPEC,
    eval_key,
)
from ..result import EvalResult
from ..tracker import StoreUnavailable
from .environment import environment
from .provenance import code_version, git_state, stale_reason
from .store import EMA_ARTIFACT, job_lock, load_ema, publish_ema, shared_classifiers, store_root
from .tracking import MlflowStore, MlflowTracker, SystemMetrics


@dataclass
class Task:
    """Everything a worker needs, picklable (configs travel as canonical JSON)."""

    config_json: str
    arm: dict[str, Any]
    seed: int
    spec_name: str
    experiment_id: str
    parent_run_id: str
    uri: str
    force: bool = False
    threads: int = 1
    code_version: str = field(default_factory=code_version)  # of the launching process
    reuse: str = "same-code"  # or "any": accept finished runs made by other harness code


@dataclass
class Outcome:
    config_hash: str
    arm: dict[str, Any]
    seed: int
    status: str  # trained | evaluated | skipped | failed
    run_id: str | None = None
    error: str | None = None
    note: str | None = None  # why a finished run was not reused (stale code)
    evals: list[EvalResult] = field(default_factory=list)
    seconds: float = 0.0
    store_unavailable: bool = False  # stopped because the tracking store could not be reached


@dataclass
class JobState:
    state: str  # done | evaluate | resume | new
    run: Any = None  # the training run to continue or evaluate, or None
    done: set = field(default_factory=set)  # keys of the settings already evaluated
    stale: Any = None  # a run that matches the config but was made by other code (not reused)
    why: str | None = None  # why ``stale`` is not reused


def job_state(
    store: MlflowStore, experiment_id: str, config: Config, code: str | None = None, reuse: str = "same-code"
) -> JobState:
    """What is left to do for ``config``. With ``reuse="same-code"`` only runs (and evaluations) made by
    this ``code`` version count; a finished or unfinished run of other code is retrained from scratch."""
    code = code or code_version()
    runs = store.runs(experiment_id, {ROLE: "train", HASH: config.train_hash()})
    current = (lambda r: True) if reuse == "any" else (lambda r: stale_reason(r.data.tags, code) is None)
    stale = next((r for r in runs if not current(r) and r.info.status in ("FINISHED", "RUNNING", "FAILED")), None)
    runs = [r for r in runs if current(r)]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished:
        run = finished[0]
        evals = store.runs(experiment_id, {ROLE: "eval", PARENT: run.info.run_id})
        done = {
            SamplerSetting.from_params(e.data.params).key for e in evals if e.info.status == "FINISHED" and current(e)
        }
        wanted = {s.key for s in config.eval.samplers}
        return JobState("done" if wanted <= done else "evaluate", run, done)
    if runs:
        return JobState("resume", runs[0])
    why = stale_reason(stale.data.tags, code) if stale is not None else None
    return JobState("new", stale=stale, why=why)


def run_task(task: Task) -> Outcome:
    """Train (or resume) one job and evaluate its missing settings. Runs in a worker process."""
    import torch

    from ..training.checkpoint import CheckpointError

    torch.set_num_threads(task.threads)
    config = Config.model_validate_json(task.config_json)
    root = store_root(task.uri)
    h = config.train_hash()
    out = Outcome(h, task.arm, task.seed, "skipped")
    start = time.perf_counter()
    with job_lock(root, h):  # a second launch waits here, then finds the run finished
        tracker = None
        try:
            store = MlflowStore(task.uri)
            close_stale_evals(store, task.experiment_id, h)
            js = job_state(store, task.experiment_id, config, task.code_version, task.reuse)
            state, run, done = js.state, js.run, js.done
            if (task.force and state != "new") or js.stale is not None and state == "new":
                # Retrain from scratch: the checkpoint belongs to the run that is no longer reused.
                if js.stale is not None and state == "new":
                    out.note = f"retrained: run {js.stale.info.run_id[:8]} was {js.why} (--reuse any keeps it)"
                    if js.stale.info.status == "RUNNING":  # its process is gone: we hold the job lock
                        store.client.set_terminated(js.stale.info.run_id, status="KILLED")
                state, run, done = "new", None, set()
                shutil.rmtree(root / "checkpoints" / task.spec_name / h, ignore_errors=True)
            from ..evaluation.evaluate import Evaluator, default_cache_dir, grid_key, save_png
            from ..training.data import load_dataset
            from ..training.train import train

            run_dir = root / "checkpoints" / task.spec_name / h  # "never twice" holds per experiment
            missing = [s for s in config.eval.samplers if s.key not in done]
            if state == "done":
                out.run_id = run.info.run_id
                return out
            data = load_dataset(config.data.dataset, config.data.root, config.data.download)
            device = _device(config)
            shared_classifiers(store, data, default_cache_dir())  # before the evaluator loads them from the cache
            evaluator = Evaluator(config, data, device=device, out_dir=run_dir)
            features = feature_tags(evaluator)
            if state in ("new", "resume"):
                if state == "resume":
                    tracker = store.resume_run(run.info.run_id)
                    tracker.set_tags(features)
                else:
                    tracker = store.start_run(
                        task.experiment_id,
                        run_name(task.arm, task.seed),
                        parent=task.parent_run_id,
                        tags={
                            **run_tags(task, "train", h),
                            CHECKPOINT: str(run_dir / "checkpoint.pt"),
                            DEVICE: str(device),
                            **features,
                        },
                    )
                    tracker.log_params(config.flat())
                    tracker.log_dict(config.to_dict(), "config.json")
                    log_dataset(tracker, config, data)
                    store.share_arms_view(task.experiment_id, list(task.arm))
                log_environment(tracker, device)  # again on resume: the machine that finishes a run counts
                with SystemMetrics(task.uri, tracker.run_id, resume=state == "resume"):
                    result = train(config, tracker, run_dir=run_dir, data=data, evaluator=evaluator)  # lines, no bar
                publish_ema(store, tracker.run_id, config, run_dir)
                summary = {"classifier_accuracy": evaluator.classifier_accuracy}
                if result.recognizable_at_step is not None:
                    summary["recognizable_at_step"] = result.recognizable_at_step
                tracker.log_metrics(summary)
                tracker.finish("FINISHED")
                out.status, out.run_id = "trained", tracker.run_id
                finals = {e.setting.key: e for e in result.final_evals()}
            else:
                out.status, out.run_id, finals = "evaluated", run.info.run_id, {}
            model = None
            if any(s.key not in finals for s in missing):  # the local checkpoint, else the run's logged weights
                fetch = lambda dest: store.download(out.run_id, EMA_ARTIFACT, dest) is not None  # noqa: E731
                model = load_ema(config, data, run_dir, device, fetch=fetch)
            for setting in missing:
                result = finals.get(setting.key)
                if result is None:
                    result, grid = evaluator.evaluate_setting(model, setting, step=config.train.steps, final=True)
                    save_png(grid, run_dir / "grids" / setting.label / f"step_{config.train.steps:07d}.png")
                    # Beside the training run's own grids, so a report on any machine finds it.
                    MlflowTracker(store.client, out.run_id).log_image(grid, grid_key(setting.label), config.train.steps)
                    log_final_on_training_run(store, out.run_id, result)
                log_eval(store, task, out.run_id, h, result, features)
                out.evals.append(result)
        except StoreUnavailable as err:  # nothing more can be tracked: the run stays RUNNING and resumes later
            out.status, out.error, out.store_unavailable = "failed", str(err), True
        except BaseException as err:  # noqa: BLE001 - a failed job must not take the others down
            if tracker is not None:
                tracker.set_tags({ERROR: str(err)[:5000]})
                tracker.finish("FAILED")
            out.status, out.error = (
                "failed",
                str(err) if isinstance(err, CheckpointError) else f"{type(err).__name__}: {err}",
            )
            if not isinstance(err, Exception):
                raise
            if os.environ.get("HARNESS_DEBUG"):
                traceback.print_exc()
        finally:
            out.seconds = time.perf_counter() - start
    return out


def _device(config: Config):
    from ..device import resolve_device

    return resolve_device(os.environ.get("HARNESS_DEVICE") or config.train.device)


def run_tags(task: Task, role: str, h: str) -> dict[str, Any]:
    """The tags every training and evaluation run of a job carries (what it is, and which code made it)."""
    return {
        ROLE: role,
        HASH: h,
        SPEC: task.spec_name,
        COMMIT: git_state()[0],
        CODE_VERSION: task.code_version,
        ARM: json.dumps(task.arm),  # JSON, not "k=v" text: a list value holds ", " too
        SEED: task.seed,
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
    first = next(iter(metrics), None)
    # One batch writes them all: a launch that died before its evaluation run finished may have logged
    # them already, and a second value at the same step would draw the curve's end twice.
    if first is None or any(m.step == step for m in store.client.get_metric_history(run_id, first)):
        return
    MlflowTracker(store.client, run_id).log_metrics(metrics, step=step)


def log_eval(store: MlflowStore, task: Task, train_run_id: str, h: str, result: EvalResult, features: dict) -> None:
    child = store.start_run(
        task.experiment_id,
        f"{run_name(task.arm, task.seed)} {result.label}",
        parent=train_run_id,
        tags={**run_tags(task, "eval", h), **features},  # features: the fingerprints of the classifiers it used
    )
    child.log_params(result.setting.model_dump())
    child.log_metrics(result.metrics, step=result.step)
    if "fid_inception" in result.unavailable:
        child.set_tags({FID_INCEPTION_UNAVAILABLE: result.unavailable["fid_inception"]})
    child.finish("FINISHED")


def close_stale_evals(store: MlflowStore, experiment_id: str, config_hash: str) -> None:
    """Mark KILLED the evaluation runs of ``config_hash`` left RUNNING by a job that died or lost its store.

    Called under the job's lock: no live process is evaluating this hash.
    """
    for run in store.runs(experiment_id, {ROLE: "eval", HASH: config_hash}):
        if run.info.status == "RUNNING":
            store.client.set_terminated(run.info.run_id, status="KILLED")


def feature_tags(evaluator) -> dict[str, str]:
    """The fingerprints of the classifiers an evaluator scores with: FIDs compare only where they are equal."""
    return {
        FEATURE_FINGERPRINT: evaluator.classifier.fingerprint,
        RECOGNIZER_FINGERPRINT: evaluator.recognizer.fingerprint,
    }


class TrainRun:
    """The MLflow run of one ``harness train``, tagged as a job's training run is (``run_tags``: role
    ``train``, config hash, commit, code version; the experiment stands for the spec, the arm is ``base``).

    Running the same command again resumes the checkpoint in the run dir, and so the run that logged it.
    """

    def __init__(self, store: MlflowStore, experiment: str, config: Config, run_dir: Path, evaluator):
        h, checkpoint = config.train_hash(), str(run_dir / "checkpoint.pt")
        self.store, self.experiment, self.hash = store, experiment, h
        self.features = feature_tags(evaluator)
        exp_id = store.experiment_id(experiment)
        self.task = Task(config.model_dump_json(), {}, config.train.seed, experiment, exp_id, "", store.uri)
        runs = store.runs(exp_id, {ROLE: "train", HASH: h}) if Path(checkpoint).is_file() else []
        earlier = next((r for r in runs if r.data.tags.get(CHECKPOINT) == checkpoint), None)
        if earlier:
            self.tracker = store.resume_run(earlier.info.run_id)
            return
        tags = {
            **run_tags(self.task, "train", h),
            CHECKPOINT: checkpoint,
            DEVICE: str(evaluator.device),
            **self.features,
        }
        self.tracker = store.start_run(exp_id, f"train-{h}", tags=tags)
        self.tracker.log_params(config.flat())
        self.tracker.log_dict(config.to_dict(), "config.json")

    def finish(self, result) -> None:
        """The run's summary metrics, one evaluation child run per final setting (as ``harness run``), FINISHED."""
        summary = {"classifier_accuracy": result.classifier_accuracy}
        if result.recognizable_at_step is not None:
            summary["recognizable_at_step"] = result.recognizable_at_step
        self.tracker.log_metrics(summary)
        for e in result.final_evals():
            log_eval(self.store, self.task, self.tracker.run_id, self.hash, e, self.features)
        self.tracker.finish("FINISHED")

    def fail(self, err: BaseException) -> None:
        self.tracker.set_tags({ERROR: str(err)[:5000] or type(err).__name__})
        self.tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
