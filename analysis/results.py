"""Results out of the harness: ``harness.results`` (an experiment as the tidy results table, in pandas),
and the bodies of ``harness export`` and ``harness report --table``. Reading creates no tracking store.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from harness.config import ConfigError
from harness.orchestration.tracking import existing_store
from harness.tracker import StoreUnavailable

from .load import load_experiment
from .report import ReportPaths, write_data_report
from .table import from_table, to_table
from .table_io import SUFFIXES, read_table, write_table


def results(
    name_or_spec: str | Path,
    *,
    experiment: str | None = None,
    profile: str | None = None,
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """The results table of an experiment (docs/results-table.md): one row per (run, setting, step, metric)
    with the arm's fields as columns. ``name_or_spec``: an experiment name or an ablation spec file (its name);
    ``experiment`` names the experiment instead; ``profile``: the newest harness run of that profile.
    Raises ``LookupError`` when the store or the experiment does not exist, ``ConfigError`` for a bad spec."""
    name = experiment or experiment_name(name_or_spec)
    store = existing_store(tracking_uri)
    if store is None:
        raise LookupError(f"no tracking store at {tracking_uri or 'the default location'}; run a spec first")
    return to_table(load_experiment(store, name, profile=profile))


def experiment_name(name_or_spec: str | Path) -> str:
    """The experiment of an ablation spec file (its ``name``), or the argument itself when it is no file."""
    path = Path(name_or_spec)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return str(name_or_spec)
    from harness.config.spec import load_spec
    from harness.sweeps.search import is_sweep_spec

    if is_sweep_spec(path):
        raise ConfigError(f"{path}: a sweep spec; its results are the study's (harness report {path})")
    return load_spec(path).name


def export_command(spec: str | None, experiment: str | None, profile: str | None, out: str, uri: str | None) -> int:
    """``harness export``: the results table of an experiment to ``out`` (.csv or .parquet)."""
    if not spec and not experiment:
        raise ConfigError("export: give a SPEC file or --experiment NAME")
    if Path(out).suffix not in SUFFIXES:  # before anything is read
        raise ConfigError(f"--out {out}: a results table is a {' or '.join(SUFFIXES)} file")
    try:
        df = results(spec or "", experiment=experiment, profile=profile, tracking_uri=uri)
    except (LookupError, StoreUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = write_table(df, out)
    final = df[df["kind"] == "final"]
    print(f"results: {path} ({len(df):,} rows; {len(final):,} final values of {final['run_id'].nunique()} runs)")
    return 0


def table_report_command(table: str, out: str | None, spec: str | None, reports: Path) -> ReportPaths:
    """``harness report --table FILE``: the report of a results table, in ``out`` (default: ``reports`` /
    the table's experiment). A bad table or spec is a ConfigError before anything is written."""
    data = from_table(read_table(table))
    paths = write_data_report(data, Path(out) if out else reports / data.experiment, spec_path=spec)
    print(f"report: {paths.html}\n        {paths.md}\n        {paths.answers}")
    return paths
