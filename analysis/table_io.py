"""Results tables on disk and from elsewhere: reading CSV or Parquet, checking the columns (a missing or
misspelled one is a one-line ``ConfigError`` naming the file), casting values to their types, and filling
what a researcher's own table leaves out (its runs, settings and kinds) so that ``analysis.table.from_table``
reads it as it reads the harness's. Column types are declared once, in ``analysis.table.COLUMNS``.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

import pandas as pd

from harness.config import Config, ConfigError, SamplerSetting
from harness.config.schema import EVAL_METRICS, arm_text

from .arm_labels import arm_label
from .load import RUN_COLUMNS, RUN_TYPES

SUFFIXES = (".csv", ".parquet")
DEFAULT_SETTING = "default"  # the one setting of a table that names none
DEFAULTS = Config()  # what a researcher's table does not say about recognizability: the harness's definition


def read_table(path: str | Path) -> pd.DataFrame:
    """A results table from ``path`` (``.csv`` or ``.parquet``), checked and cast; relative grid paths are
    read from the table's folder, and a table without an ``experiment`` column is named after its file."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"{path}: a results table is a {' or '.join(SUFFIXES)} file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        if path.suffix == ".csv":  # every cell as text, cast below: floats come back bit for bit
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            df = pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any parser's complaint is the same one line
        raise ConfigError(f"{path}: not a readable {path.suffix[1:]} table ({str(err).splitlines()[0]})") from None
    try:
        df = normalize(df)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    df["experiment"] = df["experiment"].fillna(path.stem)
    df["path"] = [p if p is None or Path(p).is_absolute() else str(path.parent / p) for p in df["path"]]
    return df


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a results table as CSV or Parquet, by the suffix of ``path``."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"--out {path}: a results table is a {' or '.join(SUFFIXES)} file")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


def axes_of(df: pd.DataFrame) -> list[str]:
    """The arm's fields of a table: its dotted columns (``diffusion.schedule``), in column order."""
    return [c for c in df.columns if "." in c]


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """The table with every column of the schema, each cast to its type, and what a researcher's table leaves
    out filled in: run ids from arm and seed, the setting, and the kind of each row (no ``kind``: a row with a
    step is a point of a curve and the last step of each curve is also the final value; metric ``loss`` is the
    training loss). Raises ``ConfigError`` (one line, no file name) on a missing, unknown or ill-typed column."""
    from .table import COLUMNS, KINDS, REQUIRED, SETTING_TYPES, columns

    unknown = [c for c in df.columns if c not in COLUMNS and "." not in c]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(COLUMNS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown column {unknown[0]!r}{hint}; arm fields are dotted keys such as diffusion.schedule, "
            "the other columns are listed in docs/results-table.md"
        )
    if missing := [c for c in REQUIRED if c not in df.columns]:
        raise ConfigError(
            f"no column {missing[0]!r}; a results table needs {', '.join(REQUIRED)} (docs/results-table.md)"
        )
    axes = axes_of(df)
    df = df.reset_index(drop=True).reindex(columns=columns(axes))
    for c, t in COLUMNS.items():
        df[c] = cast(df[c], t, c)
    for c in axes:
        df[c] = cast(df[c], "str", c)
    if bad := sorted(set(df["kind"].dropna()) - set(KINDS)):
        raise ConfigError(f"column 'kind': unknown kind {bad[0]!r}; valid: {', '.join(KINDS)}")
    measured = df["kind"].isna() | df["kind"].isin(["final", "curve", "loss", "bucket"])
    if bad := sorted(set(df.loc[measured, "metric"].dropna()) - {*EVAL_METRICS, "loss"}):
        raise ConfigError(f"column 'metric': unknown metric {bad[0]!r}; valid: loss, {', '.join(EVAL_METRICS)}")
    if (df.loc[measured, "metric"].isna()).any():
        raise ConfigError(f"column 'metric' is empty in row {int(df.index[measured & df['metric'].isna()][0]) + 2}")
    _identify(df, axes)
    _settings(df, SETTING_TYPES)
    df = _kinds(df)
    final = df[df["kind"] == "final"]
    if final.duplicated(["run_id", "setting", "metric"]).any():
        row = final[final.duplicated(["run_id", "setting", "metric"])].iloc[0]
        raise ConfigError(
            f"two values of {row['metric']} for arm {row['arm_label']} seed {row['seed']} at setting {row['setting']}"
            " (give each a distinct setting or step)"
        )
    return df


def _identify(df: pd.DataFrame, axes: list[str]) -> None:
    """Fill arm, arm label and run id where a table leaves them out: an arm is its axis values (or the
    ``arm_label`` given, or ``base``), a run is an arm and a seed."""
    rows = df["kind"].isna() | df["kind"].isin(["run", "final", "curve", "loss", "bucket", "grid"])
    if not rows.any():  # a launch that died before its first job: nothing to identify (the report says so)
        return
    if df.loc[rows, "seed"].isna().any():
        raise ConfigError(f"column 'seed' is empty in row {int(df.index[rows & df['seed'].isna()][0]) + 2}")
    untold = rows & (df["arm"].isna() | df["arm_label"].isna())
    arms = {
        i: {k: v for k, v in zip(axes, values) if v is not None}
        for i, values in zip(df.index[untold], df.loc[untold, axes].itertuples(index=False))
    }
    given = df["arm_label"]
    df["arm"] = df["arm"].fillna(pd.Series({i: arm_text(a) for i, a in arms.items() if a}, dtype=object))
    df["arm"] = df["arm"].fillna(given).where(~untold | df["arm"].notna() | given.notna(), "base")
    df["arm_label"] = given.fillna(pd.Series({i: arm_label(a) for i, a in arms.items() if a}, dtype=object))
    df["arm_label"] = df["arm_label"].where(~untold | df["arm_label"].notna(), "base")
    derived = df["arm_label"] + " seed " + df["seed"].astype("Int64").astype(str)
    df["run_id"] = df["run_id"].where(df["run_id"].notna() | ~rows, derived)
    df["config_hash"] = df["config_hash"].fillna(df["run_id"])


def _settings(df: pd.DataFrame, setting_types: dict[str, str]) -> None:
    """A row that names no setting: the label of its sampler fields when it gives any, else ``default``."""
    needs = df["setting"].isna() & (df["kind"].isna() | df["kind"].isin(["final", "curve", "grid"]))
    fields = list(setting_types)
    for i in df.index[needs]:
        given = {k: df.at[i, k] for k in fields if pd.notna(df.at[i, k])}
        df.at[i, "setting"] = SamplerSetting.from_params(given).label if given else DEFAULT_SETTING


def _kinds(df: pd.DataFrame) -> pd.DataFrame:
    untold = df["kind"].isna()
    if not untold.any():
        return df
    rows = df[untold]
    loss = rows["metric"] == "loss"
    curve = rows["step"].notna() & ~loss
    df.loc[rows.index[loss], "kind"] = "loss"
    df.loc[rows.index[curve], "kind"] = "curve"
    df.loc[rows.index[~loss & ~curve], "kind"] = "final"
    points = df.loc[rows.index[curve]]
    last = points.loc[points.groupby(["run_id", "setting", "metric"], sort=False)["step"].idxmax()]
    return pd.concat([df, last.assign(kind="final")], ignore_index=True)


def researcher_runs(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One run per run id of a table without run rows, with what its rows tell: its training steps (the last
    step seen), N, final loss (the last loss row), data set and code; the rest unknown (NaN), the run finished."""
    out = []
    for _, g in df[df["run_id"].notna() & (df["kind"] != "missing")].groupby("run_id", sort=False):
        first, loss = g.iloc[0], g[g["kind"] == "loss"].sort_values("step")
        out.append(
            {
                **{c: first[c] for c in ("run_id", "config_hash", "arm", "arm_label", "seed", *axes)},
                "status": "FINISHED",
                "steps": g["step"].max(),
                "num_samples": g.loc[g["kind"] == "final", "N"].max(),
                "dataset": _known(g["dataset"], "unspecified"),
                "device": "unknown",
                "conditional": False,
                # a table may state its own (the quick profiles ask when half the samples are recognizable)
                "recognizability_threshold": _known(
                    g.get("recognizability_threshold"), DEFAULTS.eval.recognizability_threshold
                ),
                "recognizable_fraction": _known(g.get("recognizable_fraction"), DEFAULTS.eval.recognizable_fraction),
                "final_loss": loss["value"].iloc[-1] if len(loss) else math.nan,
                "has_history": len(loss) > 0,
                "commit": _known(g["commit"], "unknown"),
                "code_version": _known(g["code_version"], "unknown"),
            }
        )
    runs = pd.DataFrame(out, columns=RUN_COLUMNS + axes)
    for c, t in RUN_TYPES.items():
        runs[c] = cast(runs[c], t, c)
    return runs


def _known(values: pd.Series | None, default):
    return values.dropna().iloc[0] if values is not None and values.notna().any() else default


# -- types ------------------------------------------------------------------------------------------


def cast(col: pd.Series, kind: str, name: str) -> pd.Series:
    """``col`` as ``kind`` (str, text: a str whose absence is "", int, float, bool, time); a value that is
    not of the kind raises ConfigError naming the column. Text is parsed with float(): exact for repr output."""
    given = col.notna()
    if kind == "time":
        try:
            return pd.to_datetime(col, utc=True)
        except (ValueError, TypeError):
            raise ConfigError(f"column {name!r}: not a date and time") from None
    if kind in ("str", "text"):
        empty = "" if kind == "text" else None
        return pd.Series([str(v) if ok else empty for v, ok in zip(col, given)], index=col.index, dtype=object)
    if kind == "bool":
        truth = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}
        try:
            return pd.Series([truth[str(v).lower()] if ok else False for v, ok in zip(col, given)], index=col.index)
        except KeyError as err:
            raise ConfigError(f"column {name!r}: {err.args[0]!r} is not true or false") from None
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        numbers = col.astype(float)
    else:
        numbers = pd.Series(math.nan, index=col.index, dtype=float)
        numbers[given] = col[given].map(lambda v: _number(v, name)).astype(float)
    if kind == "float":
        return numbers
    whole = numbers.isna() | (numbers == numbers.round())
    if not whole.all():
        raise ConfigError(f"column {name!r}: {float(numbers[~whole].iloc[0])!r} is not an integer")
    return numbers.astype("int64") if numbers.notna().all() else numbers


def _number(v, name: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"column {name!r}: {v!r} is not a number") from None
