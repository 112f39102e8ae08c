"""MLflow -> tables for a sweep report: one study's parent run, its trials, their seeds and confirmations.

The report reads MLflow only, never the Optuna study (only ``harness.sweeps`` imports optuna): the parent
run (role ``sweep``) holds the study's settings as tags and params, each trial is a child run (role
``trial``) whose objective metrics are the aggregate over its seeds, each seed's model is a child of its
trial (role ``trial_seed``), and each confirmation is a child of the parent (role ``confirm``) trained
with a fresh seed. The tag names are ``harness.config.schema``'s.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config.schema import (
    AGGREGATE,
    BEST_TRIAL,
    CODE_VERSION,
    COMMIT,
    CONFIRM_RANK,
    CONFIRM_SEEDS,
    ERROR,
    FEATURE_FINGERPRINT,
    FIGURE_UNAVAILABLE,
    N_TRIALS,
    PARENT,
    PROFILE,
    PRUNER,
    QUESTION,
    ROLE,
    SAMPLER,
    SEED,
    SEEDS,
    STOPPED,
    STORAGE,
    STUDY,
    TRIAL,
    TRIAL_STATE,
    eval_key,
    lower_is_better,
    parse_eval_key,
    spread_key,
)
from harness.orchestration.tracking import MlflowStore


class NothingToReport(LookupError):
    """The experiment holds no sweep this report can be written for; the message is one line."""


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # minimize | maximize

    @property
    def lower_is_better(self) -> bool:
        return self.direction == "minimize"


TRIAL_COLUMNS = ["trial", "run_id", "state", "best", "stopped", "start", "end", "n_seeds"]
TRAINING_COLUMNS = [
    "role",
    "trial",
    "seed",
    "run_id",
    "status",
    "steps",
    "seconds",
    "fingerprint",
    "num_generated",
    "num_reference",
]
CONFIRM_COLUMNS = ["trial", "rank", "seed", "run_id", "arm_label"]


@dataclass
class SweepData:
    """One study as tables. ``trials`` has a column per searched param (dotted key, MLflow's string), per
    objective metric, per ``spread_key(metric)`` and ``last_<metric>`` (the last periodic evaluation, for
    pruned trials); ``confirms`` a column per evaluation metric of the confirmation run."""

    experiment: str
    study: str
    question: str
    profile: str
    parent_run_id: str
    parent_status: str
    objectives: list[Objective]
    params: list[str]  # searched dotted keys
    space: dict[str, dict[str, Any]]  # search.json's params: {type, low, high, log, choices}
    setting: str  # the evaluation setting label trials are scored with
    aggregate: str  # mean | median over a trial's seeds
    seeds: list[int]
    confirm_seeds: list[int]
    n_trials: int | None  # the study's target
    sampler: str
    pruner: str
    storage: str
    base: dict[str, Any]  # base_config.json (empty if not logged)
    trials: pd.DataFrame  # one row per trial number (its newest run)
    trainings: pd.DataFrame  # one row per trained model: role search | confirm
    confirms: pd.DataFrame  # one row per finished confirmation run
    importances: dict[str, bytes] = field(default_factory=dict)  # figure name -> logged PNG
    unavailable: dict[str, str] = field(default_factory=dict)  # figure name -> why the sweep could not draw it
    code_versions: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)  # every study in the experiment, newest first

    @property
    def objective(self) -> Objective:
        """The objective the answer ranks by: the only one, or the first of a multi-objective study."""
        return self.objectives[0]


def report_kind(store: MlflowStore, experiment: str, role: str | None = None) -> str:
    """``sweep`` or ``ablation``: the role of the experiment's newest parent run (of ``role`` only, if given);
    an experiment of training runs alone (``harness train``) is an ``ablation`` without a plan.
    Raises ``NothingToReport`` when there is nothing to report (no experiment, or no trained model)."""
    exp = store.client.get_experiment_by_name(experiment)
    if exp is None:
        raise NothingToReport(f"no experiment {experiment!r} in {store.uri}; run the spec first")
    roles = [role] if role else ["sweep", "ablation"]
    parents = [r for kind in roles for r in store.runs(exp.experiment_id, {ROLE: kind})]
    if parents:
        return max(parents, key=lambda r: r.info.start_time).data.tags[ROLE]
    if role != "sweep" and any(STUDY not in r.data.tags for r in store.runs(exp.experiment_id, {ROLE: "train"})):
        return "ablation"
    what = {"sweep": "sweep", "ablation": "harness run"}.get(role, "harness run, harness train or sweep")
    raise NothingToReport(
        f"experiment {experiment!r} in {store.uri} has no {what} to report on; "
        f"run a spec with `harness run` or `harness sweep` first"
    )


def sweep_parents(store: MlflowStore, experiment: str) -> list:
    """The experiment's sweep parent runs, newest first (none if the experiment does not exist)."""
    exp = store.client.get_experiment_by_name(experiment)
    return store.runs(exp.experiment_id, {ROLE: "sweep"}) if exp is not None else []


def load_sweep_data(
    store: MlflowStore, experiment: str, *, study: str | None = None, profile: str | None = None
) -> SweepData:
    """The study ``study`` of ``experiment`` (default: the newest, or the newest of ``profile``)."""
    parents = sweep_parents(store, experiment)
    if not parents:
        raise NothingToReport(f"experiment {experiment!r} in {store.uri} has no sweep (no run tagged {ROLE}=sweep)")
    studies = list(dict.fromkeys(p.data.tags.get(STUDY, "?") for p in parents))
    chosen = [
        p
        for p in parents
        if (study is None or p.data.tags.get(STUDY) == study)
        and (profile is None or p.data.tags.get(PROFILE) == profile)
    ]
    if not chosen:
        wanted = f"study {study!r}" if study else f"profile {profile!r}"
        raise NothingToReport(
            f"experiment {experiment!r} has no sweep of {wanted}; its studies: {', '.join(studies)} "
            f"(choose one with --profile)"
        )
    parent = chosen[0]
    exp_id, tags, p = parent.info.experiment_id, parent.data.tags, parent.data.params
    name = tags.get(STUDY, parent.info.run_name)
    objectives = [_objective(part) for part in p.get("objective", "fid").split(",") if part.strip()]
    search = _json_artifact(store, parent.info.run_id, "search.json") or {}
    space = search.get("params", {})
    params = list(space) or [k.strip() for k in p.get("search_space", "").split(",") if k.strip()]

    trial_runs = _newest(store.runs(exp_id, {ROLE: "trial", STUDY: name}), lambda r: int(r.data.tags[TRIAL]))
    # Every model a study trained is a training run (harness.orchestration.jobs.run_job) tagged with the study:
    # a trial's seed below its trial run, a confirmation (it carries its rank) below the sweep's parent.
    trained = store.runs(exp_id, {ROLE: "train", STUDY: name})
    seed_runs = [
        r
        for r in _newest([r for r in trained if CONFIRM_RANK not in r.data.tags], _trial_seed)
        if r.data.tags.get(PARENT) in {t.info.run_id for t in trial_runs}
    ]
    confirm_runs = _newest([r for r in trained if CONFIRM_RANK in r.data.tags], _trial_seed)
    setting = p.get("setting", "")
    base = _json_artifact(store, parent.info.run_id, "base_config.json") or {}
    everything = [parent, *trial_runs, *seed_runs, *confirm_runs]
    return SweepData(
        experiment=experiment,
        study=name,
        question=tags.get(QUESTION, ""),
        profile=tags.get(PROFILE, "default"),
        parent_run_id=parent.info.run_id,
        parent_status=parent.info.status,
        objectives=objectives,
        params=params,
        space=space,
        setting=setting,
        aggregate=tags.get(AGGREGATE, "mean"),
        seeds=_int_list(tags.get(SEEDS)),
        confirm_seeds=_int_list(tags.get(CONFIRM_SEEDS)),
        n_trials=int(tags[N_TRIALS]) if tags.get(N_TRIALS, "").isdigit() else None,
        sampler=tags.get(SAMPLER, "unknown"),
        pruner=tags.get(PRUNER, "unknown"),
        storage=tags.get(STORAGE, "unknown"),
        base=base,
        trials=_trials_table(trial_runs, seed_runs, params, objectives, setting),
        trainings=_trainings_table(store, trial_runs, seed_runs, confirm_runs, base, objectives, setting),
        confirms=_confirms_table(confirm_runs, params, setting),
        importances=_importances(store, parent, objectives),
        unavailable={
            k.removeprefix(FIGURE_UNAVAILABLE): v for k, v in tags.items() if k.startswith(FIGURE_UNAVAILABLE)
        },
        code_versions=sorted({r.data.tags[CODE_VERSION] for r in everything if CODE_VERSION in r.data.tags}),
        commits=sorted({r.data.tags[COMMIT] for r in everything if COMMIT in r.data.tags}),
        studies=studies,
    )


def _newest(runs: list, key) -> list:
    """``runs`` come newest first: keep the first of each key (a re-run of a trial or seed supersedes)."""
    seen: dict = {}
    for r in runs:
        seen.setdefault(key(r), r)
    return list(seen.values())


def _trial_seed(run) -> tuple[int, int]:
    return int(run.data.tags[TRIAL]), int(run.data.tags.get(SEED, -1))


def _objective(text: str) -> Objective:
    """'fid:minimize' (the parent's ``objective`` param); a bare metric takes its natural direction."""
    metric, _, direction = text.strip().partition(":")
    return Objective(metric, direction or ("minimize" if lower_is_better(metric) else "maximize"))


def _int_list(text: str | None) -> list[int]:
    try:
        return [int(s) for s in json.loads(text)] if text else []
    except (ValueError, TypeError):
        return []


def _json_artifact(store: MlflowStore, run_id: str, name: str) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = store.download(run_id, name, Path(tmp) / name)
        return json.loads(path.read_text()) if path is not None else None


def _importances(store: MlflowStore, parent, objectives: list[Objective]) -> dict[str, bytes]:
    """The parameter-importance PNGs the sweep drew with Optuna (fANOVA needs the study, which we do not read)."""
    names = ["param_importances"] if len(objectives) == 1 else [f"param_importances_{o.metric}" for o in objectives]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = store.download(parent.info.run_id, f"{name}.png", Path(tmp) / f"{name}.png")
            if path is not None:
                out[name] = path.read_bytes()
    return out


def trial_row(data: SweepData, number: int) -> pd.Series:
    """A trial's row of ``data.trials``; a confirmed trial whose trial run is missing gets its confirmation
    run's sampled values and no search value."""
    if number in set(data.trials["trial"]):
        return data.trials.set_index("trial").loc[number]
    confirm = data.confirms[data.confirms["trial"] == number].iloc[0]
    return pd.Series({k: confirm.get(k) for k in data.params}).reindex(data.trials.columns.drop("trial"))


def ranked_trials(data: SweepData) -> pd.DataFrame:
    """Complete trials with a value of the (first) objective, best first."""
    o = data.objective
    done = data.trials[data.trials["state"].eq("COMPLETE") & data.trials[o.metric].notna()]
    return done.sort_values([o.metric, "trial"], ascending=[o.lower_is_better, True])


# -- tables -----------------------------------------------------------------------------------------------


def _final_metrics(run, setting: str) -> dict[str, float]:
    """A training run's final evaluation of ``setting`` (its ``eval/<label>/<metric>`` keys), by metric name."""
    out = {}
    for key, value in run.data.metrics.items():
        parsed = parse_eval_key(key)
        if parsed is not None and parsed[0] == setting:
            out[parsed[1]] = value
    return out


def _last_value(runs: list, setting: str, metric: str) -> float:
    """The last periodic evaluation of ``metric`` on the first of ``runs`` that logged it, averaged over
    seeds when only the seed runs did (a pruned trial has no final value)."""
    key = eval_key(setting, metric)
    values = [r.data.metrics[key] for r in runs if key in r.data.metrics]
    return float(pd.Series(values, dtype=float).mean()) if values else float("nan")


def _trials_table(
    trial_runs: list, seed_runs: list, params: list[str], objectives: list[Objective], setting: str
) -> pd.DataFrame:
    by_trial: dict[str, list] = {}
    for r in seed_runs:
        by_trial.setdefault(r.data.tags[PARENT], []).append(r)
    rows = []
    for r in trial_runs:
        t, m = r.data.tags, r.data.metrics
        seeds = by_trial.get(r.info.run_id, [])
        row = {
            "trial": int(t[TRIAL]),
            "run_id": r.info.run_id,
            "state": t.get(TRIAL_STATE, "RUNNING" if r.info.status == "RUNNING" else "unknown"),
            "best": t.get(BEST_TRIAL) == "true",
            "stopped": t.get(STOPPED) or t.get(ERROR) or "",
            "start": r.info.start_time,
            "end": r.info.end_time,
            "n_seeds": int(m.get("n_seeds", len(seeds) or 1)),
            **{k: r.data.params.get(k) for k in params},
        }
        for o in objectives:
            row[o.metric] = m.get(o.metric, float("nan"))
            row[spread_key(o.metric)] = m.get(spread_key(o.metric), float("nan"))
            own = _last_value([r], setting, o.metric)  # the old layout trained in the trial run itself
            row[f"last_{o.metric}"] = own if pd.notna(own) else _last_value(seeds, setting, o.metric)
        rows.append(row)
    metrics = [c for o in objectives for c in (o.metric, spread_key(o.metric), f"last_{o.metric}")]
    df = pd.DataFrame(rows, columns=TRIAL_COLUMNS + params + metrics)
    return df.sort_values("trial").reset_index(drop=True)


def _steps(store: MlflowStore, run, state: str, planned: int | None, setting: str, metric: str) -> float:
    """Training steps a run took: its planned ``train.steps`` unless its trial stopped early, then the step
    of its last periodic evaluation (the pruner stops a run right after one); nan when not logged."""
    if state in ("COMPLETE", "confirm"):
        return float(planned) if planned is not None else float("nan")
    key = eval_key(setting, metric)
    if key not in run.data.metrics:
        return float("nan")
    return float(max(m.step for m in store.client.get_metric_history(run.info.run_id, key)))


def _trainings_table(
    store: MlflowStore,
    trial_runs: list,
    seed_runs: list,
    confirm_runs: list,
    base: dict,
    objectives: list[Objective],
    setting: str,
) -> pd.DataFrame:
    """Every trained model: a trial's seed runs (or the trial run itself, when it trained alone) and the
    confirmation runs."""
    base_steps = (base.get("train") or {}).get("steps")
    trials = {r.info.run_id: r for r in trial_runs}
    trained_in = {r.data.tags[PARENT] for r in seed_runs}
    alone = [  # a trial that trained in its own run logged training metrics there
        r for r in trial_runs if r.info.run_id not in trained_in and any(k.startswith("train/") for k in r.data.metrics)
    ]
    search = seed_runs + alone
    rows = []
    for role, runs in (("search", search), ("confirm", confirm_runs)):
        for r in runs:
            trial = trials.get(r.data.tags.get(PARENT), r)
            planned = r.data.params.get("train.steps") or trial.data.params.get("train.steps") or base_steps
            state = "confirm" if role == "confirm" else trial.data.tags.get(TRIAL_STATE, "unknown")
            rows.append(
                {
                    "role": role,
                    "trial": int(r.data.tags[TRIAL]),
                    "seed": int(r.data.tags[SEED]) if SEED in r.data.tags else None,
                    "run_id": r.info.run_id,
                    "status": r.info.status,
                    "steps": _steps(store, r, state, int(planned) if planned else None, setting, objectives[0].metric),
                    "seconds": r.data.metrics.get("train/seconds", float("nan")),
                    "fingerprint": r.data.tags.get(FEATURE_FINGERPRINT) or trial.data.tags.get(FEATURE_FINGERPRINT),
                    **{k: _final_metrics(r, setting).get(k, float("nan")) for k in ("num_generated", "num_reference")},
                }
            )
    return pd.DataFrame(rows, columns=TRAINING_COLUMNS)


def _confirms_table(confirm_runs: list, params: list[str], setting: str) -> pd.DataFrame:
    """Finished confirmation runs: trial, its search rank, seed, the searched params and every metric."""
    rows = []
    for r in confirm_runs:
        if r.info.status != "FINISHED":
            continue
        t = r.data.tags
        rows.append(
            {
                "trial": int(t[TRIAL]),
                "rank": int(t[CONFIRM_RANK]) if t.get(CONFIRM_RANK, "").isdigit() else None,
                "seed": int(t[SEED]) if SEED in t else None,
                "run_id": r.info.run_id,
                "arm_label": f"trial {t[TRIAL]}",
                **{k: r.data.params.get(k) for k in params},
                **_final_metrics(r, setting),
            }
        )
    return pd.DataFrame(rows, columns=list(dict.fromkeys(CONFIRM_COLUMNS + params + [k for r in rows for k in r])))
