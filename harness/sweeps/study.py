"""A sweep's study: its Optuna storage (journal file or RDB), dead-trial recovery, and the MLflow parent
run that collects the trials, the best one and the figures."""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from ..config import (
    ConfigError,
    SamplerSetting,
)
from ..config.schema import (
    AGGREGATE,
    BEST_RUN_ID,
    BEST_TRIAL,
    BEST_TRIAL_NUMBER,
    COMMIT,
    CONFIRM_SEEDS,
    DIRTY,
    ERROR,
    FIGURE_UNAVAILABLE,
    HASH,
    N_TRIALS,
    PROFILE,
    PRUNER,
    QUESTION,
    ROLE,
    SAMPLER,
    SEEDS,
    SPEC,
    STORAGE,
    STUDY,
    TRIAL,
    TRIAL_STATE,
)
from ..orchestration.provenance import git_state
from ..orchestration.store import hold_lock, lock_held, lock_path
from ..orchestration.tracking import MlflowStore, MlflowTracker
from .search import Sweep

HEARTBEAT_SECONDS, GRACE_SECONDS = 60, 180  # RDB storage: a trial silent for 3 minutes is stale
MAX_RETRY = 2  # a trial whose worker died runs again at most this often (a third death: it stays FAIL)


# -- storage --------------------------------------------------------------------------------------------


def journal_path(root: Path, spec_name: str) -> Path:
    return root / "optuna" / f"{spec_name}.log"


def open_storage(
    storage: str | None,
    root: Path,
    spec_name: str,
    *,
    heartbeat_interval: int = HEARTBEAT_SECONDS,
    grace_period: int = GRACE_SECONDS,
) -> optuna.storages.BaseStorage:
    """A journal file (default, or a path) for processes on one machine; an RDB URL for several machines.

    RDB storages record a heartbeat per running trial; a trial silent for ``grace_period`` seconds is
    failed and its parameters enqueued again (``RetryHeartbeatStaleTrialCallback``). Journal files
    have no heartbeat: ``retry_dead_trials`` finds dead workers by their per-trial file lock instead.
    """
    if storage is None or "://" not in storage:
        path = Path(storage) if storage else journal_path(root, spec_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Appends are serialized by an O_CREAT|O_EXCL lock file beside the log (safe for processes on
        # one machine and on NFSv3+); a holder that died is overridden after its 30 s grace period.
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            storage,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )


def storage_label(storage: str | None, root: Path, spec_name: str) -> str:
    """Where the study lives, without any password in a URL."""
    if storage is None or "://" not in storage:
        return str(Path(storage) if storage else journal_path(root, spec_name))
    scheme, rest = storage.split("://", 1)
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}" if "@" in rest else storage


def local_storage(storage: str | None, root: Path, spec_name: str) -> dict[str, str]:
    """The Optuna storage, if it is a journal file or SQLite: {what it is: what a cluster uses instead}."""
    if storage is None or "://" not in storage or storage.startswith("sqlite:"):
        kind = "SQLite Optuna storage" if storage and storage.startswith("sqlite:") else "Optuna journal file"
        return {f"{kind} {storage_label(storage, root, spec_name)}": "--storage postgresql+psycopg://..."}
    return {}


def create_study(sweep: Sweep, storage) -> optuna.Study:
    """Create the study, or check that an existing one was made for the same base, budget and scoring."""
    study = optuna.create_study(
        storage=storage, study_name=sweep.study_name, directions=sweep.directions, load_if_exists=True
    )
    have = [d.name.lower() for d in study.directions]
    if have != sweep.directions:
        raise ConfigError(
            f"{sweep.source}: search.objective: study {sweep.study_name!r} optimizes {have}, not "
            f"{sweep.directions}; use another profile or remove the study from its storage"
        )
    mark = study.user_attrs.get("harness.fingerprint")
    if mark is None:
        study.set_user_attr("harness.fingerprint", sweep.fingerprint())
        study.set_user_attr("harness.objective", [o.metric for o in sweep.search.objective])
    elif mark != sweep.fingerprint():
        raise ConfigError(
            f"{sweep.source}: study {sweep.study_name!r} was started with another base configuration "
            f"or scoring (fingerprint {mark} != {sweep.fingerprint()}); its trials would not compare. "
            f"Use another profile or remove the study from its storage"
        )
    with warnings.catch_warnings():  # optuna-dashboard names the objectives by these ("Objective 0" without)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.metric for o in sweep.search.objective])
    return study


def counts(study: optuna.Study) -> dict[str, int]:
    out = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return out


def trial_lock_name(study_name: str, number: int) -> str:
    return f"trial-{study_name}-{number}"


def retry_dead_trials(study: optuna.Study, root: Path) -> list[int]:
    """Journal storage: fail RUNNING trials whose worker died, and enqueue their parameters again.

    Call with the study's claim lock held: a worker takes its trial lock before it lets go of the
    claim, so a RUNNING trial with a free lock has no live worker.
    """
    dead = []
    for t in study.get_trials(deepcopy=True, states=(TrialState.RUNNING,)):
        if lock_held(lock_path(root, trial_lock_name(study.study_name, t.number))):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # it finished after all
        enqueue_again(study, t)
        dead.append(t.number)
    return dead


def enqueue_again(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A WAITING copy of ``trial`` with the same parameters and its retry history (at most ``MAX_RETRY``):
    the next worker to ask takes it first, and its configurations' checkpoints resume it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def recover_dead_trials(study: optuna.Study, storage, root: Path) -> None:
    """Fail (and enqueue again) trials whose worker died: by heartbeat (RDB) or by trial lock (journal)."""
    if isinstance(storage, JournalStorage):
        retry_dead_trials(study, root)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


# -- the study's parent run and its figures ------------------------------------------------------------


def open_parent(
    store: MlflowStore, experiment_id: str, sweep: Sweep, root: Path, spec_path: str, where: str
) -> MlflowTracker:
    """The study's one parent run: created by its first invocation, resumed by later ones."""
    lock = hold_lock(root, f"sweep-parent-{sweep.study_name}")
    try:
        runs = store.runs(experiment_id, {ROLE: "sweep", STUDY: sweep.study_name})
        commit, dirty = git_state()
        if runs:
            parent = store.resume_run(runs[0].info.run_id)
        else:
            parent = store.start_run(
                experiment_id,
                sweep.study_name,
                tags={
                    ROLE: "sweep",
                    HASH: "-",
                    SPEC: sweep.spec.name,
                    STUDY: sweep.study_name,
                    COMMIT: commit,
                    DIRTY: dirty,
                    PROFILE: sweep.profile or "default",
                    QUESTION: sweep.spec.question,
                },
            )
            parent.log_params(
                {
                    "objective": ", ".join(
                        f"{m}:{d}" for m, d in zip([o.metric for o in sweep.search.objective], sweep.directions)
                    ),
                    "search_space": ", ".join(sweep.params),
                    "setting": SamplerSetting(**sweep.setting).label,
                }
            )
            parent.log_dict(sweep.base, "base_config.json")
        parent.set_tags(
            {
                STORAGE: where,
                N_TRIALS: sweep.search.n_trials,
                COMMIT: commit,
                SAMPLER: sweep.search.sampler_name,
                AGGREGATE: sweep.search.aggregate,
                SEEDS: json.dumps(list(sweep.seeds)),
                CONFIRM_SEEDS: json.dumps(sweep.search.confirm.seeds if sweep.search.confirm else []),
                PRUNER: sweep.search.pruner_name if sweep.pruning else "none",
            }
        )
        parent.log_artifact(spec_path)
        parent.log_dict(sweep.search.model_dump(mode="json"), "search.json")
        return parent
    finally:
        lock.release()


def _child_runs(store: MlflowStore, experiment_id: str, study_name: str) -> dict[int, Any]:
    """The newest MLflow run of each trial number."""
    out: dict[int, Any] = {}
    for run in store.runs(experiment_id, {ROLE: "trial", STUDY: study_name}):  # newest first
        out.setdefault(int(run.data.tags[TRIAL]), run)
    return out


def finish_study(
    store: MlflowStore, experiment_id: str, study: optuna.Study, sweep: Sweep, parent: MlflowTracker
) -> tuple[dict[int, str], list[int]]:
    """Close trial (and trial-seed) runs whose worker died, tag the best trial(s), log figures and the trials."""
    children = _child_runs(store, experiment_id, sweep.study_name)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    seed_runs = [r for r in store.runs(experiment_id, {ROLE: "train", STUDY: sweep.study_name}) if TRIAL in r.data.tags]
    for run in [*children.values(), *seed_runs]:
        t = trials.get(int(run.data.tags[TRIAL]))
        if run.info.status == "RUNNING" and t is not None and t.state.is_finished():
            child = MlflowTracker(store.client, run.info.run_id)
            child.set_tags({TRIAL_STATE: t.state.name, ERROR: "its worker died"})
            child.finish("FAILED" if t.state == TrialState.FAIL else "FINISHED")
    best: list[int] = []
    if any(t.state == TrialState.COMPLETE for t in trials.values()):
        best = [t.number for t in study.best_trials] if sweep.multi_objective else [study.best_trial.number]
    for number, run in children.items():
        is_best = number in best
        if is_best or run.data.tags.get(BEST_TRIAL) == "true":
            MlflowTracker(store.client, run.info.run_id).set_tags({BEST_TRIAL: str(is_best).lower()})
    c = counts(study)
    parent.log_metrics({f"trials_{s.lower()}": n for s, n in c.items() if s in ("COMPLETE", "PRUNED", "FAIL")})
    if best and not sweep.multi_objective:
        t = trials[best[0]]
        parent.log_metrics({f"best_{sweep.search.objective[0].metric}": t.value})
        parent.set_tags(
            {
                BEST_TRIAL_NUMBER: t.number,
                BEST_RUN_ID: children[t.number].info.run_id if t.number in children else "-",
            }
        )
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "trials.csv"
        study.trials_dataframe().to_csv(table, index=False)
        parent.log_artifact(str(table))
        for path, problem in log_figures(study, sweep, Path(tmp)):
            if path is not None:
                parent.log_artifact(str(path))
            else:
                parent.set_tags({FIGURE_UNAVAILABLE + problem[0]: problem[1][:500]})
    return {n: r.info.run_id for n, r in children.items()}, best


def log_figures(study: optuna.Study, sweep: Sweep, out: Path) -> list[tuple[Path | None, tuple[str, str] | None]]:
    """Optimization history and parameter importances per objective (and the Pareto front) as PNGs."""
    import matplotlib
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plots: list[tuple[str, Callable]] = []
    for i, o in enumerate(sweep.search.objective):
        suffix = f"_{o.metric}" if sweep.multi_objective else ""
        target = (lambda t, i=i: t.values[i]) if sweep.multi_objective else None
        plots.append(
            (
                f"optimization_history{suffix}",
                lambda target=target, o=o: ovm.plot_optimization_history(study, target=target, target_name=o.metric),
            )
        )
        plots.append(
            (
                f"param_importances{suffix}",
                lambda target=target, o=o: ovm.plot_param_importances(study, target=target, target_name=o.metric),
            )
        )
    if len(sweep.search.objective) in (2, 3):
        plots.append(
            (
                "pareto_front",
                lambda: ovm.plot_pareto_front(study, target_names=[o.metric for o in sweep.search.objective]),
            )
        )
    results = []
    with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna's plots switch the global style
        warnings.simplefilter("ignore")
        for name, plot in plots:
            try:
                ax = plot()
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                path = out / f"{name}.png"
                fig.savefig(path, dpi=100, bbox_inches="tight")
                plt.close(fig)
                results.append((path, None))
            except Exception as err:  # too few finished trials, a constant objective, ...
                results.append((None, (name, f"{type(err).__name__}: {err}")))
    return results
