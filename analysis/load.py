"""MLflow -> tidy DataFrames: everything a report needs about one experiment (one spec).

Training runs are loaded by experiment, not by parent run: a job done in an earlier ``harness run``
is not re-run and its training run stays a child of that earlier parent. By default only the jobs of
the newest ``harness run`` (its ``plan.json``) are kept, so a smoke run and a full run of the same spec
are never pooled into one comparison. All MLflow access goes through the ``MlflowStore`` passed in.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import Config, SamplerSetting
from harness.config.schema import (
    ARM,
    CHECKPOINT,
    CODE_VERSION,
    COMMIT,
    CURVE_CODE,
    DEVICE,
    ERROR,
    EVAL_METRICS,
    FEATURE_FINGERPRINT,
    FID_INCEPTION_UNAVAILABLE,
    GFLOPS_PER_IMAGE,
    HASH,
    NUM_PARAMETERS,
    PARENT,
    PROFILE,
    QUESTION,
    ROLE,
    SEED,
    STUDY,
    arm_text,
)
from harness.orchestration.tracking import MlflowStore

from .arm_labels import arm_dict, arm_keys, arm_label, varying_fields  # noqa: F401 - re-exported: the sections and tests read them here
from .grids import grids_table
from .histories import BUCKET_COLUMNS, CURVE_COLUMNS, LOSS_COLUMNS, histories  # noqa: F401 - columns re-exported

SETTING_PARAMS = tuple(SamplerSetting.model_fields)  # the one schema of a sampler setting

# Column -> type of the runs table, in column order (also the schema an empty table gets, and what the
# results table casts its run rows back to: analysis/table.py). "text" is a string whose absence is "".
RUN_TYPES = {
    "run_id": "str",
    "config_hash": "str",
    "arm": "str",
    "arm_label": "str",
    "seed": "int",
    "status": "str",
    "start": "time",
    "end": "time",
    "seconds": "float",
    "steps": "int",
    "batch_size": "int",
    "images_seen": "int",
    "steps_per_epoch": "float",  # NaN where the run's config counts in steps (see epoch_length)
    "num_samples": "int",
    "dataset": "str",
    "process": "str",  # diffusion.process: ddpm | flow
    "device": "str",
    "conditional": "bool",
    "recognizability_threshold": "float",
    "recognizable_fraction": "float",
    "classifier_accuracy": "float",
    "final_loss": "float",
    "images_per_second": "float",
    "num_parameters": "float",  # of the network (NaN for runs tracked before it was logged)
    "gflops_per_image": "float",  # one forward pass, batch of 1
    "has_history": "bool",
    "checkpoint": "text",
    "commit": "str",
    "code_version": "str",
    "curve_code": "str",  # the evaluation code of its in-training evaluations (harness.curve_code_version)
    "parent_run_id": "str",
}
RUN_COLUMNS = list(RUN_TYPES)
EVAL_COLUMNS = [
    "run_id",
    "eval_run_id",
    "config_hash",
    "arm",
    "arm_label",
    "seed",
    "setting",
    *SETTING_PARAMS,
    "step",
    "seconds",
    *EVAL_METRICS,
    "fid_inception_unavailable",
    "feature_fingerprint",  # the domain classifier FID/KID/PRC were computed with: compare within one value
    "commit",
    "code_version",
]


@dataclass
class AblationData:
    """One experiment as tables. Axis columns (dotted keys, e.g. ``diffusion.schedule``) are added to
    ``runs``, ``evals`` and ``curves``; ``arms`` and ``settings`` give the plan's order."""

    experiment: str
    question: str
    profile: str
    axes: list[str]  # dotted keys that vary between arms, in the spec's order
    arms: list[str]  # arm labels in plan order
    settings: list[str]  # evaluation setting labels in plan order; the first one is "the" setting
    runs: pd.DataFrame  # one row per training run
    evals: pd.DataFrame  # one row per (training run, evaluation setting): the final evaluation
    curves: pd.DataFrame  # periodic evaluations, long: one row per (run, step, setting, metric)
    loss: pd.DataFrame  # training loss per step, long
    buckets: pd.DataFrame  # loss per tenth of the timestep range at log intervals, long
    grids: pd.DataFrame  # sample grid PNGs on disk, one row per (run, setting, step)
    parent_run_id: str | None = None
    parent_status: str | None = None
    # Planned jobs with no finished training run: the plan's {config_hash, arm, seed, ...} plus ``reason``,
    # e.g. "failed: non-finite loss at step 3" (the newest training run's harness.error tag).
    missing: list[dict[str, Any]] = field(default_factory=list)
    planned: bool = True  # jobs and settings come from a plan.json (False: whatever the experiment holds)
    # config hash -> the setting labels its job was planned with (plans before 2026-11 did not say: all)
    planned_settings: dict[str, list[str]] = field(default_factory=dict)

    @property
    def unit(self) -> str:
        """The training axis of the report: 'epoch' when every run's config speaks in epochs, else 'step'."""
        spe = self.runs["steps_per_epoch"]
        return "epoch" if len(spe) and spe.notna().all() else "step"

    def to_unit(self, df: pd.DataFrame, column: str = "step") -> pd.Series:
        """``df[column]`` (training steps of the runs in ``df["run_id"]``) in ``unit``, per run."""
        if self.unit == "step":
            return df[column]
        return df[column] / df["run_id"].map(self.runs.set_index("run_id")["steps_per_epoch"])


def load_experiment(
    store: MlflowStore,
    experiment: str,
    *,
    latest_plan: bool = True,
    study: str | None = None,
    profile: str | None = None,
) -> AblationData:
    """Load every finished training run of ``experiment`` (newest per config hash) and its evaluations.

    Every trained model is a run of role ``train`` with ``config.flat()`` as params, whoever started it
    (``harness run``, ``harness train``, a sweep), and each evaluated setting a child of role ``eval``.
    ``latest_plan``: keep only the jobs and settings of the newest ``harness run`` (its plan.json), if any;
    False keeps every finished training run and every evaluation in the experiment. ``study``: the training
    runs of that sweep study (its trials' seeds and confirmations) instead of those of no study. ``profile``:
    the newest ``harness run`` of that profile instead of the newest of any (a smoke run beside a full one).
    """
    exp = store.client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment named {experiment!r} in {store.uri}")
    exp_id = exp.experiment_id
    parents = store.runs(exp_id, {ROLE: "ablation", **({PROFILE: profile} if profile else {})}) if study is None else []
    if profile and not parents:
        raise LookupError(f"experiment {experiment!r} in {store.uri} has no harness run of profile {profile!r}")
    parent = parents[0] if parents else None
    plan = _plan(store, parent.info.run_id) if parent is not None and latest_plan else None

    all_train = [  # a sweep's models are its report's, not an ablation's
        r
        for r in store.runs(exp_id, {ROLE: "train", **({STUDY: study} if study else {})})
        if r.data.tags.get(STUDY) == study
    ]
    train_runs = _newest_per_hash([r for r in all_train if r.info.status == "FINISHED"])
    if plan is not None:
        wanted = {job["config_hash"] for job in plan["jobs"]}
        train_runs = [r for r in train_runs if r.data.tags[HASH] in wanted]
    eval_runs = [r for r in store.runs(exp_id, {ROLE: "eval"}) if r.info.status == "FINISHED"]

    axes = _axes(train_runs, plan)
    runs = _runs_table(train_runs, axes)
    settings = _setting_labels(plan, eval_runs, runs)
    evals = _evals_table(eval_runs, runs, settings if plan is not None else None)
    if plan is None:  # every setting evaluated anywhere in the experiment, in order of first appearance
        settings = list(dict.fromkeys(settings + list(evals["setting"])))
    curves, loss, buckets = histories(store, train_runs, runs, settings)
    arms = _arm_order(plan, runs)
    done = set(runs["config_hash"])
    unfinished = {r.data.tags.get(HASH): r for r in reversed(all_train) if r.info.status != "FINISHED"}  # newest wins
    missing = [
        {**job, "reason": failure_reason(unfinished.get(job["config_hash"]))}
        for job in (plan["jobs"] if plan else [])
        if job["config_hash"] not in done
    ]
    return AblationData(
        experiment=experiment,
        question=parent.data.tags.get(QUESTION, "") if parent is not None else "",
        profile=parent.data.tags.get(PROFILE, "unknown") if parent is not None else "unknown",
        axes=axes,
        arms=arms,
        settings=settings,
        runs=runs,
        evals=with_axes(evals, runs, axes),
        curves=with_axes(curves, runs, axes),
        loss=loss,
        buckets=buckets,
        grids=grids_table(store, experiment, runs, settings),
        parent_run_id=parent.info.run_id if parent is not None else None,
        parent_status=parent.info.status if parent is not None else None,
        missing=missing,
        planned=plan is not None,
        planned_settings=_planned_settings(plan, runs),
    )


# -- runs -------------------------------------------------------------------------------------------


def _plan(store: MlflowStore, run_id: str) -> dict | None:
    """The parent run's plan.json ({profile, jobs: [{config_hash, arm, seed, state}], settings}), if logged."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = store.client.download_artifacts(run_id, "plan.json", tmp)
        except Exception:  # noqa: BLE001 - a parent killed before logging its plan: use every run
            return None
        return json.loads(Path(path).read_text())


def failure_reason(run) -> str:
    """Why a planned job has no finished training run, from its newest unfinished one (None: never started)."""
    if run is None:
        return "not trained: no training run recorded"
    error = run.data.tags.get(ERROR)
    if run.info.status == "RUNNING":
        return "still running, or its process died" + (f" ({error})" if error else "")
    return f"{run.info.status.lower()}: {error}" if error else f"{run.info.status.lower()} (no error recorded)"


def _newest_per_hash(runs: list) -> list:
    """``runs`` come newest first (MlflowStore.runs); keep the first of each config hash."""
    seen, out = set(), []
    for r in runs:
        h = r.data.tags.get(HASH)
        if h not in seen:
            seen.add(h)
            out.append(r)
    return out


def _axes(train_runs: list, plan: dict | None) -> list[str]:
    arms = [job["arm"] for job in plan["jobs"]] if plan else [r.data.tags.get(ARM, "base") for r in train_runs]
    keys = list(dict.fromkeys(k for a in arms for k in arm_keys(a)))
    if keys or plan:
        return keys
    # `harness train` runs have no arm: theirs are the config fields that differ between them
    return varying_fields([run_config(r.data.params, r.info.run_id).flat() for r in train_runs])


def _runs_table(train_runs: list, axes: list[str]) -> pd.DataFrame:
    rows = []
    for r in train_runs:
        p, m, t = r.data.params, r.data.metrics, r.data.tags
        config = run_config(p, r.info.run_id)
        arm = arm_text(arm_dict(t.get(ARM, "base")) or {k: p.get(k) for k in axes})  # {}: a `harness train` run
        rows.append(
            {
                "run_id": r.info.run_id,
                "config_hash": t[HASH],
                "arm": arm,
                "arm_label": arm_label(arm),
                "seed": int(t.get(SEED, config.train.seed)),
                "status": r.info.status,
                "start": _time(r.info.start_time),
                "end": _time(r.info.end_time),
                "seconds": (r.info.end_time - r.info.start_time) / 1000 if r.info.end_time else float("nan"),
                "steps": config.train.steps,
                "batch_size": config.train.batch_size,
                "images_seen": config.train.steps * config.train.batch_size,
                "steps_per_epoch": epoch_length(config),
                "num_samples": config.eval.num_samples,
                "dataset": config.data.dataset,
                "process": config.diffusion.process,
                # The device the run resolved to (the runner's tag); runs tracked without it give the setting.
                "device": t.get(DEVICE, config.train.device),
                "conditional": config.model.conditional,
                "recognizability_threshold": config.eval.recognizability_threshold,
                "recognizable_fraction": config.eval.recognizable_fraction,
                "classifier_accuracy": m.get("classifier_accuracy", float("nan")),
                "final_loss": m.get("train/final_loss", float("nan")),
                "images_per_second": m.get("train/images_per_second_mean", float("nan")),
                "num_parameters": m.get(NUM_PARAMETERS, float("nan")),
                "gflops_per_image": m.get(GFLOPS_PER_IMAGE, float("nan")),
                # A run whose checkpoint was finished by another experiment (same config hash, same store
                # root) resumes at its last step: it logs no loss or periodic evaluations of its own.
                "has_history": "train/loss" in m,
                "checkpoint": t.get(CHECKPOINT, ""),
                "commit": t.get(COMMIT, "unknown"),
                "code_version": t.get(CODE_VERSION, "unknown"),
                "curve_code": t.get(CURVE_CODE, "unknown"),
                "parent_run_id": t.get(PARENT),
            }
        )
        for key in axes:
            rows[-1][key] = p.get(key)
    return pd.DataFrame(rows, columns=RUN_COLUMNS + axes)


def run_config(params: dict[str, str], run_id: str = "?") -> Config:
    """The config a training run logged as MLflow params, validated by the config model (Config.from_params)."""
    return Config.from_params(params, f"the logged config of training run {run_id}")


def epoch_length(config: Config) -> float:
    """Steps per epoch of a run whose config speaks in epochs (``train.epochs`` or ``train.eval_epochs``),
    else NaN: the one place that decides whether a report counts a run's training in epochs."""
    return float(config.steps_per_epoch()) if config.counts_epochs() else float("nan")


def _time(ms: int | None):
    return pd.to_datetime(ms, unit="ms", utc=True) if ms else pd.NaT


def _arm_order(plan: dict | None, runs: pd.DataFrame) -> list[str]:
    arms = [job["arm"] for job in plan["jobs"]] if plan else list(runs.sort_values("start")["arm"])
    return list(dict.fromkeys(arm_label(a) for a in arms))


def with_axes(df: pd.DataFrame, runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Add the arm's axis values (columns of ``runs``) to a table keyed by run_id."""
    if not axes:
        return df
    return df.merge(runs[["run_id", *axes]], on="run_id", how="left")


# -- evaluations ------------------------------------------------------------------------------------


def setting_label(params: dict[str, Any]) -> str:
    """``ddim-50-eta0-w0``: the label the evaluator logs under (harness.config.SamplerSetting.label)."""
    return SamplerSetting.from_params(params).label


def _planned_settings(plan: dict | None, runs: pd.DataFrame) -> dict[str, list[str]]:
    """Config hash -> the labels its job was planned with. Plans logged before jobs listed their own settings
    gave every job the fitting ones of the plan's (spec.arm_settings): rebuilt here from each run's process."""
    jobs = (plan or {}).get("jobs", [])
    out = {j["config_hash"]: j["settings"] for j in jobs if "settings" in j}
    fits = {h: (p, c) for h, p, c in zip(runs["config_hash"], runs["process"], runs["conditional"])}
    for j in [j for j in jobs if "settings" not in j and j["config_hash"] in fits]:
        process, conditional = fits[j["config_hash"]]
        every = [SamplerSetting.model_validate(s) for s in plan.get("settings", [])]
        out[j["config_hash"]] = [s.label for s in every if s.misfit(process, bool(conditional)) is None]
    return out


def _setting_labels(plan: dict | None, eval_runs: list, runs: pd.DataFrame) -> list[str]:
    if plan is not None and plan.get("settings"):
        return list(dict.fromkeys(setting_label(s) for s in plan["settings"]))
    ids = set(runs["run_id"])
    ordered = sorted((r for r in eval_runs if r.data.tags.get(PARENT) in ids), key=lambda r: r.info.start_time)
    return list(dict.fromkeys(setting_label(r.data.params) for r in ordered))


def _evals_table(eval_runs: list, runs: pd.DataFrame, settings: list[str] | None) -> pd.DataFrame:
    by_run = runs.set_index("run_id")
    rows, seen = [], set()
    for r in eval_runs:  # newest first: the first of each (training run, setting) wins
        train_id = r.data.tags.get(PARENT)
        if train_id not in by_run.index:
            continue
        p = r.data.params
        label = setting_label(p)
        if (settings is not None and label not in settings) or (train_id, label) in seen:
            continue
        seen.add((train_id, label))
        run = by_run.loc[train_id]
        rows.append(
            {
                "run_id": train_id,
                "eval_run_id": r.info.run_id,
                "config_hash": run["config_hash"],
                "arm": run["arm"],
                "arm_label": run["arm_label"],
                "seed": run["seed"],
                "setting": label,
                **SamplerSetting.from_params(p).model_dump(),
                "step": run["steps"],
                "seconds": (r.info.end_time - r.info.start_time) / 1000 if r.info.end_time else float("nan"),
                **{k: r.data.metrics.get(k, float("nan")) for k in EVAL_METRICS},
                "fid_inception_unavailable": r.data.tags.get(FID_INCEPTION_UNAVAILABLE),
                "feature_fingerprint": r.data.tags.get(FEATURE_FINGERPRINT),
                "commit": r.data.tags.get(COMMIT, "unknown"),
                "code_version": r.data.tags.get(CODE_VERSION, "unknown"),
            }
        )
    df = pd.DataFrame(rows, columns=EVAL_COLUMNS)
    if settings:  # plan order, then arm and seed
        df["setting"] = pd.Categorical(
            df["setting"], categories=list(dict.fromkeys(settings + list(df["setting"]))), ordered=True
        )
        df = df.sort_values(["setting", "arm", "seed"]).reset_index(drop=True)
        df["setting"] = df["setting"].astype(str)
    return df
