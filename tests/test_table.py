"""The results table: a report built from a table is the report built from the store (fixture tables and a real
smoke run), CSV and Parquet alike; a bad table is one line and exit 2; a researcher's own table gets a report."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import S, fixture_data

from analysis.render import to_html, to_markdown
from analysis.report import build_document
from analysis.table import COLUMNS, from_table, to_table
from analysis.table_io import read_table, write_table
from harness.cli import main

ROOT = Path(__file__).parents[1]
SPEC = ROOT / "experiments" / "ablation-schedules.yaml"
TWO = {("linear", S): {"fid": [30.0, 31.0, 29.5]}, ("cosine", S): {"fid": [20.0, 21.0, 19.0]}}
GUIDED = {
    ("base", f"ddim-50-eta0-w{w}"): {"fid": [10.0 + w, 11.0 + w], "class_accuracy": [0.5, 0.6]} for w in (0, 1, 3)
}
SAMPLERS = {
    ("base", s): {"fid": [f, f + 1]} for s, f in ((S, 20.0), ("ddim-10-eta0-w0", 25.0), ("ddim-100-eta0-w0", 22.0))
}


def clear_with_a_missing_job(tmp_path):
    clear = fixture_data(tmp_path, TWO, rec_at={"linear": 1500, "cosine": 1000})
    clear.missing = [{"config_hash": "hx", "arm": {"diffusion.schedule": "cosine"}, "seed": 3, "reason": "failed: nan"}]
    return clear


def _same(a, b) -> None:
    """The two data render the same report: Markdown and HTML (whose figures are the PNG bytes)."""
    x, y = build_document(a), build_document(b)
    mx, my = to_markdown(x), to_markdown(y)
    assert mx == my, "\n".join(set(mx.splitlines()) ^ set(my.splitlines()))
    assert to_html(x) == to_html(y)


def test_a_table_round_trips_exactly_in_memory_csv_and_parquet(tmp_path):
    """``build_document(from_table(to_table(d)))`` renders as ``build_document(d)``; every experiment fact
    comes back (orders, plan, missing jobs, parent), and the run facts with the loader's types."""
    data = clear_with_a_missing_job(tmp_path)
    table = to_table(data)
    assert set(table["kind"]) == {"experiment", "run", "final", "curve", "loss", "bucket", "grid", "missing"}
    back = from_table(table)
    _same(data, back)
    for f in ("axes", "arms", "settings", "missing", "planned_settings", "parent_run_id", "question", "profile"):
        assert getattr(back, f) == getattr(data, f), f
    for suffix in (".csv", ".parquet"):
        again = from_table(read_table(write_table(table, tmp_path / f"results{suffix}")))
        for frame in ("runs", "evals", "curves", "loss", "buckets", "grids"):  # so the same report, bit for bit
            pd.testing.assert_frame_equal(getattr(again, frame), getattr(back, frame), obj=f"{suffix} {frame}")
        assert again.runs["seed"].dtype == "int64" and again.runs["conditional"].dtype == bool


@pytest.mark.slow
@pytest.mark.parametrize(
    "final, kw",
    [
        (GUIDED, {"conditional": True, "question": "Which w?"}),
        (SAMPLERS, {"pngs": False}),
        ({(a, s): {"fid": v["fid"][:1]} for (a, s), v in TWO.items()}, {"steps_per_epoch": 100}),
    ],
    ids=["guidance weights", "sampler settings without grids", "epochs, one seed"],
)
def test_every_kind_of_report_round_trips(tmp_path, final, kw):
    data = fixture_data(tmp_path, final, **kw)
    _same(data, from_table(read_table(write_table(to_table(data), tmp_path / "results.csv"))))


def test_final_rows_are_tidy_and_carry_their_basis(tmp_path):
    data = fixture_data(tmp_path, TWO)
    final = to_table(data).query("kind == 'final' and metric == 'fid'")
    assert len(final) == 6 and list(final["value"]) == list(data.evals["fid"])
    assert (final["N"] == 500).all() and (final["dataset"] == "mnist-5k").all()  # N, the reference
    assert set(final["diffusion.schedule"]) == {"linear", "cosine"} and final["code_version"].eq("e1").all()
    assert "num_generated" not in set(to_table(data)["metric"])  # N is its column, written once


def test_grids_whose_files_are_gone_are_skipped(tmp_path):
    data = fixture_data(tmp_path, TWO)
    table = to_table(data)
    moved = table.assign(path=table["path"].str.replace(str(tmp_path), str(tmp_path / "elsewhere"), regex=False))
    md = to_markdown(build_document(from_table(moved)))
    assert "No sample grids found on disk" in md and "samples_over_training.png" not in md
    # relative paths are read from the table's folder
    rel = table.assign(path=[p if pd.isna(p) else str(Path(p).relative_to(tmp_path)) for p in table["path"]])
    assert len(from_table(read_table(write_table(rel, tmp_path / "t.csv"))).grids) == len(data.grids)


def researcher_table(rng) -> pd.DataFrame:
    """3 arms x 3 seeds, FID at two steps and a loss history: means 40, 30, 20 with noise of sd 1."""
    rows = []
    for width, mu in (("32", 40.0), ("64", 30.0), ("128", 20.0)):
        for seed in range(3):
            for step in (1000, 2000):
                fid = mu * 2000 / step + rng.normal()
                rows.append({"model.width": width, "seed": seed, "step": step, "metric": "fid", "value": fid})
            for step in range(100, 2001, 100):
                loss = 1 / np.sqrt(step) + 0.01 * rng.normal()
                rows.append({"model.width": width, "seed": seed, "step": step, "metric": "loss", "value": loss})
    return pd.DataFrame(rows)


def test_a_researchers_own_table_gets_a_report(tmp_path, capsys):
    df = researcher_table(np.random.default_rng(0))
    table = tmp_path / "mine.parquet"
    df.to_parquet(table, index=False)
    assert main(["report", "--table", str(table), "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("# mine: ablation report")  # named after its file
    assert "| FID | 32 - 128 |" in md and "128 better" in md and "| FID | 64 - 128 |" in md
    assert "Axes: model.width; arms: 32; 64; 128; seeds: 0, 1, 2" in md and "No sample grids found" in md
    assert json.loads((tmp_path / "out" / "answers.json").read_text()) is not None
    data = from_table(read_table(table))  # the last step is the final value; the first is a point on the curve
    assert list(data.evals["step"].unique()) == [2000] and sorted(data.curves["step"].unique()) == [1000, 2000]
    assert data.runs["final_loss"].tolist() == df[(df.metric == "loss") & (df.step == 2000)]["value"].tolist()
    # Without steps every row is a final value; an arm label alone names the arms.
    flat = df[df.metric == "fid"].drop(columns=["step"]).drop_duplicates(["model.width", "seed"])
    flat = flat.rename(columns={"model.width": "arm_label"})
    assert from_table(flat).arms == ["32", "64", "128"] and len(from_table(flat).evals) == 9


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda d: d.drop(columns=["metric"]), "no column 'metric'"),
        (lambda d: d.rename(columns={"seed": "sed"}), "unknown column 'sed' (did you mean 'seed'?)"),
        (lambda d: d.assign(metric="fdi"), "unknown metric 'fdi'"),
        (lambda d: d.assign(value="high"), "column 'value': 'high' is not a number"),
        (lambda d: d.assign(seed=0.5), "column 'seed': 0.5 is not an integer"),
    ],
)
def test_a_bad_table_is_one_line_and_exit_2(tmp_path, capsys, change, says):
    table = tmp_path / "bad.csv"
    change(researcher_table(np.random.default_rng(0))).to_csv(table, index=False)
    out = tmp_path / "report"
    assert main(["report", "--table", str(table), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {table}: ") and says in err, err
    assert not out.exists()


def test_export_refuses_a_bad_out_before_reading(tmp_path, capsys):
    assert main(["export", "--experiment", "x", "--out", str(tmp_path / "r.xlsx")]) == 2
    assert "a results table is a .csv or .parquet file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_every_column_is_documented():
    text = (ROOT / "docs" / "results-table.md").read_text()
    documented = set(re.findall(r"^\| `([\w.]+)` \|", text, re.M))
    assert set(COLUMNS) <= documented, sorted(set(COLUMNS) - documented)


# -- a real smoke run, through the command line ------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from harness.config.spec import load_spec, make_plan
    from harness.orchestration.runner import run_plan
    from harness.orchestration.tracking import MlflowStore

    store = MlflowStore(f"sqlite:///{tmp_path_factory.mktemp('table') / 'mlflow.db'}")
    spec = load_spec(SPEC).model_copy(update={"cpu_jobs": 1})
    plan = make_plan(spec, str(SPEC), "smoke", {"train.device": "cpu"})
    outcomes, _ = run_plan(plan, store, spec_path=str(SPEC), quiet=True)
    assert [o.status for o in outcomes] == ["trained", "trained"], [o.error for o in outcomes]
    return store


@pytest.mark.slow
def test_export_then_report_table_is_report_spec(smoke, tmp_path, capsys):
    uri = smoke.uri
    assert main(["report", str(SPEC), "--tracking-uri", uri, "--out", str(tmp_path / "spec")]) == 0
    expected = (tmp_path / "spec" / "report.md").read_text()
    assert (tmp_path / "spec" / "answers.json").is_file()
    for suffix in (".csv", ".parquet"):
        table = tmp_path / f"results{suffix}"
        assert main(["export", str(SPEC), "--tracking-uri", uri, "--out", str(table)]) == 0
        out = tmp_path / f"table{suffix}"
        assert main(["report", "--table", str(table), "--spec", str(SPEC), "--out", str(out)]) == 0
        assert (out / "report.md").read_text() == expected
        assert (out / "index.html").read_text() == (tmp_path / "spec" / "index.html").read_text()
    capsys.readouterr()
    from harness import results

    df = results(str(SPEC), tracking_uri=uri)
    fid = df.query("kind == 'final' and metric == 'fid'")
    assert sorted(fid["diffusion.schedule"]) == ["cosine", "linear"] and (fid["N"] == 16).all()
    assert fid["feature_fingerprint"].notna().all() and fid["commit"].notna().all()
    assert (
        main(["export", str(SPEC), "--profile", "full", "--tracking-uri", uri, "--out", str(tmp_path / "f.csv")]) == 2
    )
    assert "no harness run of profile 'full'" in capsys.readouterr().err and not (tmp_path / "f.csv").exists()
