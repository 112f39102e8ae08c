"""Run a plan: every job trained once, evaluated with every setting, tracked in MLflow.

The plan's jobs (``orchestration.jobs``) run on an executor: in-process, a pool of local workers (one or
more per GPU, or ``cpu_jobs`` on the CPU) or Slurm through submitit. The parent MLflow run holds the
spec, the plan and the outcomes; a parent left RUNNING by a dead process is closed at the next launch.
"""

from __future__ import annotations

import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import Any

from .. import stop
from ..config import Config, ConfigError
from ..config.schema import CODE_VERSION, COMMIT, DIRTY, HASH, PROFILE, QUESTION, REUSE, ROLE, SPEC, arm_text
from ..config.spec import Plan
from ..private import SUBMITIT_READS, private_dir
from ..tracker import StoreUnavailable
from .executors import KILL_MARGIN_SECONDS, array_result, signal_workers, submit_array, worker_pool
from .job_runs import close_killed_job
from .jobs import (
    INTERRUPTED,
    KILLED_STATUS,
    NOT_STARTED,
    JobState,
    Outcome,
    Task,
    job_state,
    run_task,
)
from .mlflow_ui import NOTE, arms_view_url, launch_note, ui_server
from .placement import resolve_plan, slots
from .provenance import code_version, git_state
from .store import hold_lock, lock_held, lock_path, shared_classifiers, store_root
from .tracking import MlflowStore, default_tracking_uri

BAR_REFRESH_SECONDS = 5.0
POLL_SECONDS = 0.5  # how soon the launcher sees a finished job or a stop request

# -- executors --------------------------------------------------------------------------------------


def run_local(tasks: list[Task], jobs: int, *, gpus: int = 0, jobs_per_gpu: int = 1, on_event=print) -> list[Outcome]:
    """Each task on a local worker (in this process when ``jobs`` is 1 on the CPU). After a stop request
    (``harness.stop``) no task starts; running ones get the grace to checkpoint, then their workers are killed."""
    if jobs <= 1 and gpus == 0:
        outcomes = []
        for task in tasks:  # run_task stops at a step on request, and starts nothing after one
            on_event("start", task)
            outcomes.append(run_task(task))
            on_event("end", outcomes[-1])
        return outcomes
    devices = [f"cuda:{slot % gpus}" for slot in range(jobs)] if gpus else None  # jobs_per_gpu slots per device
    outcomes: list[Outcome] = []
    queue, pending, deadline, tick = list(tasks), {}, None, time.monotonic()
    pool = worker_pool(jobs, devices)
    try:
        while queue or pending:
            # At most one task per worker: none waits in the pool's queue, where a stop could not hold it back.
            while queue and len(pending) < jobs and not stop.requested():
                task = queue.pop(0)
                pending[pool.submit(run_task, task)] = task
                on_event("start", task)
            if stop.requested():
                deadline = deadline or time.monotonic() + stop.GRACE_SECONDS + KILL_MARGIN_SECONDS
                if not pending or time.monotonic() > deadline:
                    break
            done, _ = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            if not done and time.monotonic() - tick > BAR_REFRESH_SECONDS:  # workers' lines may have wiped the bar
                on_event("tick", None)
                tick = time.monotonic()
            for fut in done:
                task = pending.pop(fut)
                try:
                    outcome = fut.result()
                except Exception as err:  # the worker process died (OOM, signal)
                    outcome = _outcome(task, "failed", error=f"worker died: {err}", died=True)
                    if stop.requested():  # killed while it started, before it could hear the request
                        outcome = _outcome(task, KILLED_STATUS, note="its worker was stopped while starting")
                outcomes.append(outcome)
                on_event("end", outcome)
    except KeyboardInterrupt:  # a second Ctrl-C: the running jobs are killed below, at once
        pass
    finally:
        if pending:  # past the grace, or a second Ctrl-C: the checkpoint on disk is what remains
            signal_workers(signal.SIGKILL)
        pool.shutdown(wait=not pending, cancel_futures=True)
    for task in pending.values():
        outcomes.append(_outcome(task, KILLED_STATUS, note="killed by the launcher; resumes from its last checkpoint"))
        on_event("end", outcomes[-1])
    for task in queue:
        outcomes.append(_outcome(task, NOT_STARTED))
    return outcomes


def _outcome(task: Task, status: str, **fields) -> Outcome:
    return Outcome(Config.model_validate_json(task.config_json).train_hash(), task.arm, task.seed, status, **fields)


def run_slurm(
    tasks: list[Task], params: dict[str, Any], folder: Path, cluster: str | None = None, on_event=print
) -> list[Outcome]:
    jobs = submit_array(run_task, tasks, params, folder, cluster)
    for t in tasks:
        on_event("start", t)
    outcomes = []
    for task, job in zip(tasks, jobs):
        outcome = array_result(job)
        if isinstance(outcome, Exception):
            outcome = _outcome(task, "failed", error=str(outcome), died=True)
        outcomes.append(outcome)
        on_event("end", outcome)
    return outcomes


# -- the whole plan ---------------------------------------------------------------------------------


def describe(plan: Plan, store: MlflowStore | None, reuse: str = "same-code") -> list[dict[str, Any]]:
    """The plan as rows: hash, arm, seed and what is already done (needs the store)."""
    if any(job.config.train.unresolved() for job in plan.jobs):  # its hashes would name no run
        raise ValueError("describe: resolve the plan's auto fields first (placement.resolve_plan)")
    exp_id = None
    if store is not None:
        exp = store.client.get_experiment_by_name(plan.spec.name)
        exp_id = exp.experiment_id if exp else None
    rows = []
    for job in plan.jobs:
        js = job_state(store, exp_id, job.config, code_version(), reuse) if exp_id else JobState("new")
        state = "stale" if js.stale is not None and js.state == "new" else js.state
        # Its own settings: arms of different processes are evaluated with different ones (spec.arm_settings).
        settings = [s.label for s in job.config.eval.samplers]
        rows.append(
            {"config_hash": job.config_hash, "arm": job.arm, "seed": job.seed, "state": state, "settings": settings}
        )
    return rows


def run_plan(
    plan: Plan,
    store: MlflowStore,
    *,
    spec_path: str,
    executor: str = "local",
    force: bool = False,
    cluster: str | None = None,
    quiet: bool = False,
    reuse: str = "same-code",
    allow_local_store: bool = False,
) -> tuple[list[Outcome], str]:
    """Run every job of ``plan``; returns the outcomes and the parent run id."""
    from tqdm.auto import tqdm

    refuse_local_stores(executor, sqlite_tracking_store(store.uri), allow_local_store)
    root = store_root(store.uri)
    # Before anything is tracked: the hashes in plan.json and on the runs are those of the resolved configs.
    say = _quiet if quiet else print
    plan, autotuned = resolve_plan(plan, executor=executor, root=root, cluster=cluster, say=say)
    preflight(plan, store)  # data and domain classifiers first: a missing file fails before any run exists
    exp_id = store.experiment_id(plan.spec.name)
    close_orphaned_parents(store, exp_id, root)
    commit, dirty = git_state()
    parent = store.start_run(
        exp_id,
        f"{plan.spec.name}-{plan.profile}",
        tags={
            ROLE: "ablation",
            HASH: "-",
            SPEC: plan.spec.name,
            COMMIT: commit,
            DIRTY: dirty,
            CODE_VERSION: code_version().eval,
            REUSE: reuse,
            PROFILE: plan.profile,
            QUESTION: plan.spec.question,
            NOTE: launch_note(arms_view_url(ui_server(store.uri), exp_id)),
        },
    )
    parent_lock = hold_lock(root, f"parent-{parent.run_id}")  # held while this process lives
    parent.log_artifact(spec_path)
    rows = describe(plan, store, reuse)
    parent.log_dict({"profile": plan.profile, "jobs": rows, "settings": plan.settings}, "plan.json")
    parent.log_params({"profile": plan.profile, "jobs": len(plan.jobs), "settings": len(plan.settings)})
    if autotuned:  # what train.precision / memory_format auto became, and the timings that decided it
        parent.log_dict({"probes": autotuned}, "autotune.json")

    gpus, jobs, threads = slots(plan.spec.cpu_jobs, plan.spec.jobs_per_gpu)
    tasks = [
        Task(
            job.config.model_dump_json(),
            job.arm,
            job.seed,
            plan.spec.name,
            exp_id,
            parent.run_id,
            store.uri,
            force=force,
            threads=threads,
            code=code_version(),
            reuse=reuse,
        )
        for job in plan.jobs
    ]
    bar = tqdm(total=len(tasks), desc=plan.spec.name, unit="job", disable=quiet or None)
    counts = {"running": 0, "done": 0, "failed": 0}

    def on_event(kind: str, obj) -> None:
        if kind == "tick":
            bar.refresh()
            return
        if kind == "start":
            counts["running"] += 1
            return
        counts["running"] -= 1
        if obj.status == NOT_STARTED:
            return
        counts["failed" if obj.status == "failed" else "done"] += 1
        line = f"{obj.status:>9} {obj.config_hash} {arm_text(obj.arm)} seed={obj.seed}"
        if obj.note:
            line += f" ({obj.note})"
        if obj.error:
            line += f": {obj.error}"
        elif obj.evals:
            line += "  " + "  ".join(
                f"{e.label} fid={e.metrics['fid']:.3g} rec={e.metrics['recognizability']:.2f}" for e in obj.evals[:3]
            )
        line += f"  ({obj.seconds:.0f}s)"
        bar.write(line) if not quiet else None
        bar.set_postfix(counts)
        bar.update(1)

    serial = executor != "slurm" and jobs <= 1 and gpus == 0  # the jobs run in this process
    try:
        with stop.launcher_signals(on_first=stopping, grace=stop.GRACE_SECONDS if serial else None):
            if executor == "slurm":
                outcomes = run_slurm(
                    tasks,
                    plan.spec.slurm,
                    private_dir(root / "slurm", SUBMITIT_READS),
                    cluster=cluster,
                    on_event=on_event,
                )
            else:
                outcomes = run_local(tasks, jobs, gpus=gpus, jobs_per_gpu=plan.spec.jobs_per_gpu, on_event=on_event)
    except BaseException:
        parent.finish("KILLED")
        parent_lock.release()
        raise
    finally:
        bar.close()
    if stop.requested() or any(o.status in INTERRUPTED for o in outcomes):
        for o in outcomes:  # a worker killed before it could close its run: closed here, once it is dead
            if o.status == KILLED_STATUS:
                close_killed_job(store, exp_id, o.config_hash, o.note or "interrupted")
        parent.log_dict({"outcomes": [o.__dict__ for o in outcomes]}, "outcomes.json")
        parent.finish("KILLED")
        parent_lock.release()
        raise stop.Interrupted(interrupted_summary(outcomes, parent.run_id))
    for o in outcomes:  # a job whose process died (OOM, scancel) left its runs RUNNING: KILLED now, resumed later
        if o.died:
            close_killed_job(store, exp_id, o.config_hash, o.error or "its process died")
    lost = [o for o in outcomes if o.store_unavailable]
    if lost:  # nothing more can be logged; the next launch marks the parent KILLED and resumes the jobs
        parent_lock.release()
        raise StoreUnavailable(
            f"{lost[0].error}; {len(lost)} job(s) stopped after checkpointing: "
            "run the same command again when the store is back"
        )
    failed = [o for o in outcomes if o.status == "failed"]
    parent.log_dict({"outcomes": [o.__dict__ for o in outcomes]}, "outcomes.json")
    parent.finish("FAILED" if failed else "FINISHED")
    parent_lock.release()
    close_orphaned_parents(store, exp_id, root)  # a launch that died while this one ran
    served = "" if store.uri.startswith(("http://", "https://")) else " (`make ui` serves it)"
    say(f"the arms compared in MLflow{served}: {arms_view_url(ui_server(store.uri), exp_id)}")
    return outcomes, parent.run_id


def _quiet(_: str) -> None:
    pass


def stopping(signum: int) -> None:
    """The first Ctrl-C or SIGTERM: say what happens now, and ask the workers to checkpoint and stop."""
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    print(
        f"\n{name}: stopping; no job starts now, running jobs checkpoint and stop (Ctrl-C again stops at once)",
        file=sys.stderr,
        flush=True,
    )
    signal_workers(signal.SIGTERM)


def interrupted_summary(outcomes: list[Outcome], parent_run_id: str) -> str:
    """One line after an interrupt: what finished, what stopped, and that a rerun resumes."""
    statuses = ("trained", "evaluated", "skipped", "failed", *INTERRUPTED)
    counts = {s: sum(o.status == s for o in outcomes) for s in statuses}
    words = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return (
        f"interrupted: {words or 'nothing ran'}; parent run {parent_run_id} KILLED; run the same command again: "
        "finished jobs are kept, stopped ones resume from their checkpoints"
    )


def preflight(plan: Plan, store: MlflowStore | None = None) -> None:
    """Load every data set the plan uses and, given the store, get its domain classifiers once, before
    workers start: the store's (downloaded if this machine lacks them), else trained here and logged.

    Raises ``DataUnavailable`` (one line: which files to put where) before anything is tracked.
    """
    from ..evaluation.evaluate import default_cache_dir
    from ..training.data import load_dataset

    for key in {(j.config.data.dataset, j.config.data.root, j.config.data.download) for j in plan.jobs}:
        data = load_dataset(*key)
        if store is not None:  # the FID classifier and the recognizer
            shared_classifiers(store, data, default_cache_dir())


def close_orphaned_parents(store: MlflowStore, experiment_id: str, root: Path) -> None:
    """Mark KILLED the ablation runs left RUNNING by a process that died (its lock is free)."""
    for run in store.runs(experiment_id, {ROLE: "ablation"}):
        path = lock_path(root, f"parent-{run.info.run_id}")
        if run.info.status != "RUNNING" or lock_held(path):  # a held lock: its process is alive
            continue
        store.client.set_terminated(run.info.run_id, status="KILLED")
        path.unlink(missing_ok=True)


# -- stores that Slurm jobs share ---------------------------------------------------------------------


def sqlite_tracking_store(uri: str | None) -> dict[str, str]:
    """The tracking store, if it is a SQLite file: {what it is: what a cluster uses instead}."""
    uri = uri or default_tracking_uri()
    return {f"tracking store {uri}": "--tracking-uri http://<mlflow server>"} if uri.startswith("sqlite:") else {}


def refuse_local_stores(executor: str, local: dict[str, str], allow_local_store: bool) -> None:
    """``--executor slurm`` refuses stores kept in local files (``local``: what -> what to use instead).

    Slurm jobs on several nodes would share such a file over NFS, where SQLite's locks and the lock files
    of Optuna's journal do not hold: concurrent writers corrupt it, silently. ``--allow-local-store`` says
    the file system is not shared (one node). Raised before anything is written.
    """
    if executor != "slurm" or allow_local_store or not local:
        return
    raise ConfigError(
        f"--executor slurm with {' and '.join(local)}: SQLite and file locks are unreliable on NFS, which "
        f"Slurm nodes share; give {' and '.join(local.values())}, or --allow-local-store if this file system "
        "is not shared"
    )
