"""One job: train (or resume) a configuration and evaluate its missing settings, in a worker process.

Before anything runs, the job is classified (``job_state``): ``done`` (a finished training run with
every evaluation setting), ``evaluate`` (finished, some settings missing: they run on the saved
checkpoint), ``resume`` (an unfinished run: it continues from its checkpoint, in the same MLflow run)
or ``new``. Only runs made by the current code count unless ``reuse="any"``. A file lock per config
hash makes two launches of the same spec train each configuration once. The store's local
layout, its locks and the weights shared through the server are in ``store.py``.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import stop
from ..config import Config, SamplerSetting
from ..config.schema import (
    CHECKPOINT,
    CURVE_CODE,
    DEVICE,
    ERROR,
    HASH,
    METRICS,
    MIXED_CODE,
    PARENT,
    ROLE,
    STOPPED,
)
from ..result import EvalResult
from ..tracker import StoreUnavailable
from .job_runs import (
    close_stale_evals,
    feature_tags,
    log_dataset,
    log_environment,
    log_eval,
    log_final_on_training_run,
    restart_run,
    run_name,
    run_tags,
)
from .provenance import CodeVersion, code_version, stale_reason
from .store import (
    EMA_ARTIFACT,
    job_lock,
    load_ema,
    publish_ema,
    shared_classifiers,
    store_root,
)
from .tracking import MlflowStore, MlflowTracker, SystemMetrics


@dataclass
class Task:
    """Everything a worker needs to run one job, picklable (configs travel as canonical JSON).

    Whoever starts a training run fills this in: ``harness run`` (an arm and seed of a spec, below the
    launch's parent run), ``harness train`` (arm ``{}``, its own run dir), a sweep's trial seed and its
    confirmation (the trial's params as the arm, the study and trial as ``tags``). ``run_job`` does the rest
    the same way for all of them, so their runs carry the same params and tags.
    """

    config_json: str
    arm: dict[str, Any]
    seed: int
    spec_name: str  # the experiment's name; checkpoints live under checkpoints/<spec_name>/<hash>
    experiment_id: str
    parent_run_id: str  # "" for a top-level run
    uri: str
    force: bool = False
    threads: int = 1  # torch threads in the worker; 0 leaves the process's setting alone
    code: CodeVersion = field(default_factory=code_version)  # of the launching process
    reuse: str = "same-code"  # or "any": accept finished runs made by other harness code
    tags: dict[str, Any] = field(default_factory=dict)  # more tags on both kinds of run (a sweep's study, trial)
    run_dir: str | None = None  # checkpoints and grids; default <store root>/checkpoints/<spec_name>/<hash>
    progress: bool | None = False  # train's progress: lines in workers, a bar for `harness train`


# What became of a job when the launch was interrupted (its training run, if any, is KILLED).
STOPPED_STATUS = "stopped"  # checkpointed at a step, then stopped
KILLED_STATUS = "killed"  # interrupted between checkpoints: the last one is kept
NOT_STARTED = "not started"
INTERRUPTED = (STOPPED_STATUS, KILLED_STATUS, NOT_STARTED)


@dataclass
class Outcome:
    config_hash: str
    arm: dict[str, Any]
    seed: int
    status: str  # trained | evaluated | skipped | failed, or after an interrupt: stopped | killed | not started
    run_id: str | None = None
    error: str | None = None
    note: str | None = None  # why a finished run was not reused (stale code)
    evals: list[EvalResult] = field(default_factory=list)  # the final evaluation of every setting of the config
    seconds: float = 0.0
    store_unavailable: bool = False  # stopped because the tracking store could not be reached
    died: bool = False  # its process ended without a result (OOM, a signal, scancel): its runs are closed for it
    summary: dict[str, Any] | None = None  # TrainResult.to_json() when this job trained


@dataclass
class JobState:
    state: str  # done | evaluate | resume | new
    run: Any = None  # the training run to continue or evaluate, or None
    done: dict = field(default_factory=dict)  # setting key -> the finished evaluation run of it
    stale: Any = None  # a run that matches the config but was made by other code (not reused)
    why: str | None = None  # why ``stale`` is not reused


def job_state(
    store: MlflowStore, experiment_id: str, config: Config, code: CodeVersion | None = None, reuse: str = "same-code"
) -> JobState:
    """What is left to do for ``config``. With ``reuse="same-code"`` a training run counts only if the
    training code is the same (provenance.TRAINING), an evaluation only if the evaluation code is."""
    code = code or code_version()

    def current(run, role: str) -> bool:
        return reuse == "any" or stale_reason(run.data.tags, code, role) is None

    runs = store.runs(experiment_id, {ROLE: "train", HASH: config.train_hash()})
    alive = ("FINISHED", "RUNNING", "FAILED")
    stale = next((r for r in runs if not current(r, "train") and r.info.status in alive), None)
    runs = [r for r in runs if current(r, "train")]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished:
        run = finished[0]
        evals = store.runs(experiment_id, {ROLE: "eval", PARENT: run.info.run_id})
        done = {}
        for e in evals:
            if e.info.status == "FINISHED" and current(e, "eval"):
                done.setdefault(SamplerSetting.from_params(e.data.params).key, e)
        wanted = {s.key for s in config.eval.samplers}
        return JobState("done" if wanted <= set(done) else "evaluate", run, done)
    if runs:
        return JobState("resume", runs[0])
    why = stale_reason(stale.data.tags, code, "train") if stale is not None else None
    return JobState("new", stale=stale, why=why)


def run_task(task: Task) -> Outcome:
    """``run_job`` in a worker process: a failure is recorded in the outcome, never raised to the pool."""
    from ..training.checkpoint import CheckpointError
    from ..writes import DiskFull

    start = time.perf_counter()
    config = Config.model_validate_json(task.config_json)
    if stop.requested():  # the launch is stopping: a job not begun is left whole for the rerun
        return Outcome(config.train_hash(), task.arm, task.seed, NOT_STARTED)
    try:
        with stop.job():
            return run_job(task, config)
    except stop.Stopped as err:  # checkpointed at a step; its run is KILLED and the rerun resumes it
        out = Outcome(config.train_hash(), task.arm, task.seed, STOPPED_STATUS, note=str(err))
    except KeyboardInterrupt as err:  # between checkpoints (the grace ran out, or a second Ctrl-C)
        why = f"{err}; it resumes from its last checkpoint" if str(err) else "interrupted"
        out = Outcome(config.train_hash(), task.arm, task.seed, KILLED_STATUS, note=why)
    except StoreUnavailable as err:  # nothing more can be tracked: the run stays RUNNING and resumes later
        out = Outcome(config.train_hash(), task.arm, task.seed, "failed", error=str(err), store_unavailable=True)
    except Exception as err:  # noqa: BLE001 - a failed job must not take the others down
        why = str(err) if isinstance(err, (CheckpointError, DiskFull)) else f"{type(err).__name__}: {err}"
        out = Outcome(config.train_hash(), task.arm, task.seed, "failed", error=why)
        if os.environ.get("HARNESS_DEBUG"):
            traceback.print_exc()
    out.seconds = time.perf_counter() - start
    return out


def run_job(task: Task, config: Config, *, data=None, wrap=None, stopped: tuple[type, ...] = ()) -> Outcome:
    """The one implementation of a job: train (or resume) ``config`` and evaluate its missing settings.

    Opens the training run (or finds the one to resume or reuse), tags it, logs the config, fingerprints,
    data set, environment and system metrics, trains, logs the final weights, then one evaluation child run
    per setting. ``data``: the data set if the caller holds it already; ``wrap(evaluator)`` may watch the
    periodic evaluations (a sweep's pruning). An error ends the training run FAILED (KILLED for Ctrl-C and
    for the ``stopped`` exceptions, such as a pruned trial, tagged with why) and is raised again.
    """
    import torch

    from ..training.checkpoint import remove_run_dir
    from ..training.train import claim_run_dir

    if task.threads:
        torch.set_num_threads(task.threads)
    root = store_root(task.uri)
    h = config.train_hash()
    out = Outcome(h, task.arm, task.seed, "skipped")
    start = time.perf_counter()
    with job_lock(root, h):  # a second launch waits here, then finds the run finished
        tracker = None
        try:
            store = MlflowStore(task.uri)
            close_stale_evals(store, task.experiment_id, h)
            js = job_state(store, task.experiment_id, config, task.code, task.reuse)
            run_dir = Path(task.run_dir) if task.run_dir else root / "checkpoints" / task.spec_name / h
            stale = js.state == "new" and js.stale is not None
            if stale or (task.force and js.state != "new"):
                # Retrain from scratch: the checkpoint belongs to the run that is no longer reused.
                if stale:
                    out.note = f"retrained: run {js.stale.info.run_id[:8]} was {js.why} (--reuse any keeps it)"
                    if js.stale.info.status == "RUNNING":  # its process is gone: we hold the job lock
                        store.client.set_terminated(js.stale.info.run_id, status="KILLED")
                js = JobState("new")
                remove_run_dir(run_dir)  # what the path points to, or one line: never silently nothing
            elif js.run is not None and Path(js.run.data.tags.get(CHECKPOINT, "")).parent.is_dir():
                run_dir = Path(js.run.data.tags[CHECKPOINT]).parent  # where that run keeps its checkpoint
            if js.state != "done" and claim_run_dir(config, run_dir, force=task.force) and js.state == "resume":
                restart_run(store, js.run.info.run_id)  # its checkpoint was unreadable: its steps are not ours
                js = JobState("new")
            if js.state == "done":
                out.run_id = js.run.info.run_id
                out.evals = [logged_eval(js.done[s.key], config) for s in config.eval.samplers]
                return out
            job = _Job.build(task, config, store, run_dir, data)
            finals: dict = {}
            if js.state in ("new", "resume"):
                tracker = job.open_training_run(js)
                finals = job.train(tracker, wrap, js.state == "resume", out)
                tracker = None  # finished: a later error is the evaluation's, not the training run's
            else:
                out.status, out.run_id = "evaluated", js.run.info.run_id
            job.evaluate_missing(out, js, finals)
        except BaseException as err:
            if tracker is not None and not isinstance(err, StoreUnavailable):
                killed = isinstance(err, (KeyboardInterrupt, *stopped))
                tracker.set_tags({(STOPPED if killed else ERROR): str(err)[:5000] or type(err).__name__})
                tracker.finish("KILLED" if killed else "FAILED")
            raise
        finally:
            out.seconds = time.perf_counter() - start
    return out


@dataclass
class _Job:
    """What the steps of a job that trains or evaluates share: its task and config, the store, where its files
    go, the data, the device, the evaluator and the fingerprints of the classifiers it scores with."""

    task: Task
    config: Config
    store: MlflowStore
    run_dir: Path
    data: Any
    device: Any
    evaluator: Any
    features: dict[str, str]

    @classmethod
    def build(cls, task: Task, config: Config, store: MlflowStore, run_dir: Path, data) -> _Job:
        from ..evaluation.evaluate import Evaluator, default_cache_dir
        from ..training.data import load_dataset

        if data is None:
            data = load_dataset(config.data.dataset, config.data.root, config.data.download)
        device = _device(config)
        shared_classifiers(store, data, default_cache_dir())  # before the evaluator loads them from the cache
        evaluator = Evaluator(config, data, device=device, out_dir=run_dir)
        return cls(task, config, store, run_dir, data, device, evaluator, feature_tags(evaluator))

    def open_training_run(self, js: JobState) -> MlflowTracker:
        """Resumed as it was, or opened with its tags, params, config and data set."""
        task, config, store = self.task, self.config, self.store
        if js.state == "resume":
            tracker = store.resume_run(js.run.info.run_id)
            tracker.set_tags(self.features)
            # The curve continues: scored by two codes if this one is not the code that began it (a run from
            # before the tag stays without it: its curve's code is unknown either way).
            curve = js.run.data.tags.get(CURVE_CODE)
            if curve not in (None, task.code.eval, MIXED_CODE):
                tracker.set_tags({CURVE_CODE: MIXED_CODE})
        else:
            tags = {CHECKPOINT: str(self.run_dir / "checkpoint.pt"), DEVICE: str(self.device), **self.features}
            tags[CURVE_CODE] = task.code.eval
            tracker = store.start_run(
                task.experiment_id,
                run_name(task.arm, task.seed),
                parent=task.parent_run_id or None,
                tags={**run_tags(task, "train", config.train_hash()), **tags},
            )
            tracker.log_params(config.flat())
            tracker.log_dict(config.to_dict(), "config.json")
            log_dataset(tracker, config, self.data)
            store.share_arms_view(task.experiment_id, list(task.arm), config.eval.samplers[0].label)
        log_environment(tracker, self.device)  # again on resume: the machine that finishes a run counts
        return tracker

    def train(self, tracker: MlflowTracker, wrap, resume: bool, out: Outcome) -> dict:
        """Train to the end under ``tracker``, publish the EMA weights, end the run FINISHED; the final
        evaluations the training loop made, by setting key."""
        from ..progress import say
        from ..training.autotune import check_run
        from ..training.train import train
        from .placement import autotune_cache

        config, evaluator = self.config, self.evaluator
        with SystemMetrics(self.task.uri, tracker.run_id, resume=resume):
            scorer = wrap(evaluator) if wrap else evaluator
            result = train(
                config, tracker, run_dir=self.run_dir, data=self.data, evaluator=scorer, progress=self.task.progress
            )
        stale = check_run(config, self.device, autotune_cache(), result.interval_rates)
        if stale:  # the cached choice this run trained with no longer matches this machine
            say(stale)
        publish_ema(self.store, tracker.run_id, config, self.run_dir)
        summary = {"classifier_accuracy": evaluator.classifier_accuracy}
        if result.recognizable_at_step is not None:
            summary["recognizable_at_step"] = result.recognizable_at_step
        tracker.log_metrics(summary)
        tracker.finish("FINISHED")
        out.status, out.run_id, out.summary = "trained", tracker.run_id, result.to_json()
        return {e.setting.key: e for e in result.final_evals()}

    def evaluate_missing(self, out: Outcome, js: JobState, finals: dict) -> None:
        """One evaluation run per setting that has none yet; ``out.evals`` gets every setting's result."""
        from ..evaluation.evaluate import grid_key, save_png

        config, store, steps = self.config, self.store, self.config.train.steps
        model = None
        for setting in config.eval.samplers:
            if setting.key in js.done:
                out.evals.append(logged_eval(js.done[setting.key], config))
                continue
            result, started = finals.get(setting.key), None
            if result is None:
                started = time.time()  # the first setting's time holds loading the model
                if model is None:  # the local checkpoint, else the run's logged weights
                    fetch = lambda dest: store.download(out.run_id, EMA_ARTIFACT, dest) is not None  # noqa: E731
                    model = load_ema(config, self.data, self.run_dir, self.device, fetch=fetch)
                result, grid = self.evaluator.evaluate_setting(model, setting, step=steps, final=True)
                save_png(grid, self.run_dir / "grids" / setting.label / f"step_{steps:07d}.png")
                # Beside the training run's own grids, so a report on any machine finds it.
                MlflowTracker(store.client, out.run_id).log_image(grid, grid_key(setting.label), steps)
                log_final_on_training_run(store, out.run_id, result)
            log_eval(store, self.task, out.run_id, config.train_hash(), result, self.features, started)
            out.evals.append(result)


def logged_eval(run, config: Config) -> EvalResult:
    """A finished evaluation run read back as the result it logged."""
    metrics = {k: v for k, v in run.data.metrics.items() if k in METRICS}
    return EvalResult(config.train.steps, SamplerSetting.from_params(run.data.params), metrics)


def _device(config: Config):
    from ..device import resolve_device

    return resolve_device(os.environ.get("HARNESS_DEVICE") or config.train.device)
