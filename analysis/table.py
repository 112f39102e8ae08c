"""The results table: one experiment as one tidy long table, the interface between runs and statistics.

``to_table`` flattens ``AblationData`` into rows told apart by ``kind`` (``final``: one metric of one final
evaluation; ``curve``, ``loss``, ``bucket``: training histories; ``run``: a training run's facts; ``grid``: a
sample grid PNG; ``missing``: a planned job without a finished run; ``experiment``: the question, orders and
plan). ``from_table`` rebuilds ``AblationData`` from it, so a report built from a table is the report built
from the store. A researcher's own table (dotted arm columns, seed, metric, value; maybe step, setting, N)
is read the same way: what it does not say takes the defaults of ``analysis.table_io``. The columns, their
types and meaning: docs/results-table.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.config import SamplerSetting
from harness.config.schema import EVAL_METRICS, arm_text

from .arm_labels import arm_dict, arm_label
from .grids import GRID_COLUMNS
from .load import BUCKET_COLUMNS, CURVE_COLUMNS, EVAL_COLUMNS, LOSS_COLUMNS, RUN_TYPES, AblationData, with_axes
from .table_io import axes_of, cast, normalize, researcher_runs

KINDS = ("experiment", "run", "final", "curve", "loss", "bucket", "grid", "missing")
SETTING_TYPES = {k: {str: "str", int: "int", float: "float"}[type(v)] for k, v in SamplerSetting().model_dump().items()}
# The training run's own step count is ``train_steps``: ``steps`` is the sampler's (SamplerSetting).
RUN_RENAMES = {"steps": "train_steps"}
# Column -> type, in file order; the arm's axis columns (dotted keys) follow ``seed``.
IDENTITY = {"kind": "str", "experiment": "str", "run_id": "str", "config_hash": "str", "arm": "str"}
IDENTITY |= {"arm_label": "str", "seed": "int"}
OBSERVATION = {"setting": "str", **SETTING_TYPES, "step": "int", "metric": "str", "value": "float", "N": "float"}
OBSERVATION |= {"bucket": "int", "path": "str"}
CONTEXT = {"dataset": "str", "feature_fingerprint": "str", "eval_run_id": "str", "fid_inception_unavailable": "str"}
CONTEXT |= {"seconds": "float", "commit": "str", "code_version": "str", "detail": "str"}
RUN_FACTS = {RUN_RENAMES.get(k, k): t for k, t in RUN_TYPES.items() if k not in IDENTITY and k not in CONTEXT}
COLUMNS = {**IDENTITY, **OBSERVATION, **CONTEXT, **RUN_FACTS}
REQUIRED = ("seed", "metric", "value")  # a researcher's table needs these (and arm columns, or one arm)
N_METRIC = "num_generated"  # the final rows' ``N`` column, not a metric row of its own
EXPERIMENT_FACTS = ("question", "profile", "axes", "arms", "settings", "parent_run_id", "parent_status")
EXPERIMENT_FACTS += ("planned", "planned_settings")


def to_table(data: AblationData) -> pd.DataFrame:
    """One experiment as one tidy table (columns: ``columns(data.axes)``; rows in the order the report reads)."""
    runs = data.runs
    # Every row of a run says which arm, seed and data set it belongs to: a filter on one kind is self-contained.
    per_run = runs[["run_id", "config_hash", *data.axes, "dataset"]]
    fact = {f: getattr(data, f) for f in EXPERIMENT_FACTS}
    parts = [
        pd.DataFrame([{"kind": "experiment", "detail": json.dumps(fact)}]),
        runs.rename(columns=RUN_RENAMES).assign(kind="run"),
        _final_rows(data),
        _joined(data.curves.assign(kind="curve"), per_run),
        _joined(data.loss.rename(columns={"loss": "value"}).assign(kind="loss", metric="loss"), per_run),
        _joined(data.buckets.rename(columns={"loss": "value"}).assign(kind="bucket", metric="loss"), per_run),
        _joined(data.grids.assign(kind="grid"), per_run),
        pd.DataFrame([_missing_row(job) for job in data.missing]),
    ]
    table = pd.concat([p for p in parts if len(p)], ignore_index=True).assign(experiment=data.experiment)
    return table.reindex(columns=columns(data.axes))


def columns(axes: list[str]) -> list[str]:
    """The table's columns in file order: identity, the arm's axes, observation, context, run facts."""
    names = list(COLUMNS)
    at = names.index("seed") + 1
    return names[:at] + list(axes) + names[at:]


def _joined(df: pd.DataFrame, per_run: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in per_run if c != "run_id" and c in df]).merge(per_run, on="run_id", how="left")


def _final_rows(data: AblationData) -> pd.DataFrame:
    """The final evaluations, one row per (evaluation, metric); N carries num_generated. A metric an
    evaluation did not compute has no row, but every evaluation keeps at least one (its first metric)."""
    e = data.evals.reset_index(drop=True)
    if e.empty:
        return pd.DataFrame(columns=["kind"])
    metrics = [m for m in EVAL_METRICS if m != N_METRIC]
    ids = [c for c in e.columns if c not in EVAL_METRICS]
    long = e.assign(N=e[N_METRIC], _eval=e.index).melt(
        id_vars=[*ids, "N", "_eval"], value_vars=metrics, var_name="metric"
    )
    long["_order"] = long["metric"].map({m: i for i, m in enumerate(metrics)})
    long = long.sort_values(["_eval", "_order"], kind="stable")
    keep = long["value"].notna() | ~long.groupby("_eval")["value"].transform(lambda v: v.notna().any())
    long = long[keep & ~(long["value"].isna() & long.duplicated("_eval"))]
    dataset = long["run_id"].map(data.runs.set_index("run_id")["dataset"])
    return long.drop(columns=["_eval", "_order"]).assign(kind="final", dataset=dataset)


def _missing_row(job: dict) -> dict:
    arm = arm_dict(job.get("arm", "base"))
    return {
        "kind": "missing",
        "arm": arm_text(arm),
        "arm_label": arm_label(arm),
        "seed": job.get("seed"),
        "config_hash": job.get("config_hash"),
        "detail": json.dumps(job),
    }


def from_table(df: pd.DataFrame) -> AblationData:
    """``AblationData`` from a results table: ``to_table``'s (every fact comes back exactly) or a researcher's
    (runs, settings and orders derived from the rows; ``normalize`` says how). Bad columns or values raise
    ``ConfigError``; grids whose PNG is not on this machine are left out (the report says none were found)."""
    df = normalize(df)
    by_kind = {k: df[df["kind"] == k] for k in KINDS}
    exp = by_kind["experiment"]
    fact = json.loads(exp["detail"].iloc[0]) if len(exp) and pd.notna(exp["detail"].iloc[0]) else {}
    axes = fact.get("axes", axes_of(df))
    runs = _runs(by_kind, df, axes)
    evals = with_axes(_evals(by_kind["final"], runs), runs, axes)
    settings = fact.get("settings") or list(dict.fromkeys([*evals["setting"], *by_kind["curve"]["setting"]]))
    curves = with_axes(_frame(by_kind["curve"], CURVE_COLUMNS), runs, axes)
    grids = _frame(by_kind["grid"], GRID_COLUMNS)
    experiment = df["experiment"].dropna()
    return AblationData(
        experiment=experiment.iloc[0] if len(experiment) else "results",
        question=fact.get("question", ""),
        profile=fact.get("profile", "unknown"),
        axes=axes,
        arms=fact.get("arms") or list(dict.fromkeys(runs["arm_label"])),
        settings=settings,
        runs=runs,
        evals=evals,
        curves=curves,
        loss=_frame(by_kind["loss"].rename(columns={"value": "loss"}), LOSS_COLUMNS),
        buckets=_frame(by_kind["bucket"].rename(columns={"value": "loss"}), BUCKET_COLUMNS),
        grids=grids.loc[grids["path"].map(lambda p: Path(p).is_file()).astype(bool)].reset_index(drop=True),
        parent_run_id=fact.get("parent_run_id"),
        parent_status=fact.get("parent_status"),
        missing=[json.loads(d) for d in by_kind["missing"]["detail"]],
        planned=fact.get("planned", False),
        planned_settings=fact.get("planned_settings", {}),
    )


def _frame(rows: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``rows`` as one of the loader's tables: its columns, each of one type (a column that held NaN on
    rows of other kinds is whole again: seeds and steps back to integers)."""
    out = rows.reindex(columns=names).reset_index(drop=True)
    return out.apply(lambda c: cast(c, "float" if c.name == "loss" else COLUMNS.get(c.name, "str"), c.name))


def _runs(by_kind: dict, df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """The run rows cast back to the loader's types; a table without them (a researcher's) gets one run per
    run_id seen, with what its rows tell (``researcher_runs``)."""
    rows = by_kind["run"]
    if rows.empty:
        return researcher_runs(df, axes)
    runs = rows.drop(columns=list(RUN_RENAMES)).rename(columns={v: k for k, v in RUN_RENAMES.items()})
    runs = pd.DataFrame({c: cast(runs[c], t, c) for c, t in RUN_TYPES.items()})
    return pd.concat([runs, rows[axes]], axis=1).reset_index(drop=True)


def _evals(final: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The final rows back to one row per (training run, setting), metrics as columns, in table order."""
    key = ["run_id", "setting"]
    if final.empty:
        return pd.DataFrame(columns=EVAL_COLUMNS)
    first = final.drop_duplicates(key).set_index(key)
    wide = final.pivot(index=key, columns="metric", values="value").reindex(first.index)
    out = first.drop(columns=["metric", "value"]).join(wide.reindex(columns=[m for m in EVAL_METRICS]))
    out[N_METRIC] = out[N_METRIC].fillna(out["N"])
    by_run = runs.set_index("run_id")
    out = out.reset_index()
    for c in ("config_hash", "arm", "arm_label", "seed"):  # the run's, as the loader copies them
        out[c] = out["run_id"].map(by_run[c])
    fields = {}
    for label, row in first.reset_index().drop_duplicates("setting").set_index("setting").iterrows():
        given = {k: row[k] for k in SETTING_TYPES if pd.notna(row[k])}
        fields[label] = SamplerSetting.from_params(given).model_dump() if given else {}
    for k in SETTING_TYPES:
        out[k] = [fields[s].get(k) for s in out["setting"]]
    out["step"] = cast(out["step"], "int", "step")
    return out.reindex(columns=EVAL_COLUMNS)
