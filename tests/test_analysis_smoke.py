"""The loader and the report on a real smoke run of ablation-schedules (a throwaway SQLite store, ~15 s), and on
a hand-made experiment in the same store (provenance columns and why a planned job is missing)."""

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.grids import GRID_COLUMNS
from analysis.load import (
    BUCKET_COLUMNS,
    CURVE_COLUMNS,
    EVAL_COLUMNS,
    LOSS_COLUMNS,
    RUN_COLUMNS,
    load_experiment,
)
from analysis.report import build_document, log_report, write_report
from harness.config.schema import CODE_VERSION, COMMIT, ERROR, HASH, ROLE
from harness.config.spec import load_spec, make_plan
from harness.orchestration.runner import run_plan
from harness.orchestration.tracking import MlflowStore

SPEC = Path(__file__).parents[1] / "experiments" / "ablation-schedules.yaml"
NAME = "ablation-schedules"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = MlflowStore(f"sqlite:///{tmp_path_factory.mktemp('analysis') / 'mlflow.db'}")
    spec = load_spec(SPEC).model_copy(update={"cpu_jobs": 1})  # in this process: no worker start-up to pay for
    plan = make_plan(spec, str(SPEC), "smoke", {"train.device": "cpu"})
    outcomes, _ = run_plan(plan, store, spec_path=str(SPEC), quiet=True)
    assert [o.status for o in outcomes] == ["trained", "trained"], [o.error for o in outcomes]
    # A second launch trains nothing: its parent has no training children, so loading by parent would find nothing.
    again, _ = run_plan(plan, store, spec_path=str(SPEC), quiet=True)
    assert [o.status for o in again] == ["skipped", "skipped"]
    return store


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    return write_report(store, NAME, tmp_path_factory.mktemp("reports") / NAME, spec_path=str(SPEC))


def test_loader_reads_every_table_of_a_smoke_run(store):
    data = load_experiment(store, NAME)
    assert data.question == load_spec(SPEC).question and data.profile == "smoke"
    assert data.axes == ["diffusion.schedule"] and data.arms == ["linear", "cosine"]
    assert data.settings == ["ddim-3-eta0-w0"] and data.missing == []
    parents = store.runs(store.experiment_id(NAME), {ROLE: "ablation"})
    assert data.parent_run_id == parents[0].info.run_id and data.parent_status == "FINISHED"

    r = data.runs.set_index("arm_label")
    assert list(data.runs.columns) == RUN_COLUMNS + ["diffusion.schedule"]
    assert r.loc["cosine", "diffusion.schedule"] == "cosine" and r.loc["linear", "arm"] == "diffusion.schedule=linear"
    assert r["parent_run_id"].eq(parents[1].info.run_id).all()  # trained by the first launch, loaded anyway
    assert (r["steps"] == 4).all() and (r["images_seen"] == 32).all() and (r["seed"] == 0).all()
    assert r["has_history"].all() and (r["seconds"] > 0).all() and (r["classifier_accuracy"] > 0.9).all()
    assert (r["device"] == "cpu").all()  # the runner's harness.device tag: the device the run resolved to

    e = data.evals
    assert list(e.columns) == EVAL_COLUMNS + ["diffusion.schedule"] and len(e) == 2
    assert set(e["setting"]) == {"ddim-3-eta0-w0"} and (e["nfe"] == 3).all() and (e["step"] == 4).all()
    assert (e["num_generated"] == 16).all() and (e["num_reference"] > 1000).all() and np.isfinite(e["fid"]).all()

    c = data.curves
    assert list(c.columns) == CURVE_COLUMNS + ["diffusion.schedule"]
    for metric in ("fid", "recognizability", "precision"):
        assert sorted(c[(c["metric"] == metric) & (c["arm_label"] == "linear")]["step"]) == [2, 4]
    assert list(data.loss.columns) == LOSS_COLUMNS
    assert data.loss.groupby("run_id")["step"].apply(list).tolist() == [[1, 2, 3, 4]] * 2
    assert list(data.buckets.columns) == BUCKET_COLUMNS
    # Buckets are flushed at every log interval, evaluation and checkpoint (a tenth of the run: every step here).
    assert set(data.buckets["step"]) == {1, 2, 3, 4} and set(data.buckets["bucket"]) <= set(range(10))
    assert list(data.grids.columns) == GRID_COLUMNS and len(data.grids) == 4
    assert all(Path(p).exists() for p in data.grids["path"]) and set(data.grids["step"]) == {2, 4}


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(s) for s in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', html)]


def test_report_files_are_self_contained_and_answer_the_question(report):
    html, md = report.html.read_text(), report.md.read_text()
    assert report.html.name == "index.html" and report.md.name == "report.md"
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]*)""", html)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert "url(" not in html and "@import" not in html and "<script" not in html
    assert len(_pngs(html)) == len(links) >= 4
    for png in _pngs(html):
        assert Image.open(io.BytesIO(png)).format == "PNG"
    question = load_spec(SPEC).question
    assert f"**{question}**" in md and question in html
    assert "not tested (1 seed per arm)" in md and "smoke profile" in md
    for name in re.findall(r"\]\(([^)]+\.png)\)", md):
        assert (report.md.parent / name).stat().st_size > 1000


def test_report_is_logged_to_the_newest_parent_run(store, report):
    run_id = log_report(store, NAME, report)
    assert run_id == store.runs(store.experiment_id(NAME), {ROLE: "ablation"})[0].info.run_id
    logged = {Path(a.path).name for a in store.client.list_artifacts(run_id, "report")}
    assert {"index.html", "report.md", "loss.png", "samples_over_training.png"} <= logged


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path_factory):
    out = tmp_path_factory.mktemp("chromium")
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={out / 'profile'}",
    ]
    url = report.html.resolve().as_uri()
    shot = out / "report.png"
    run = subprocess.run(
        flags + [f"--screenshot={shot}", "--window-size=1200,3000", url], capture_output=True, text=True, timeout=120
    )
    print(f"\nscreenshot of the report: {shot}")
    assert shot.exists() and shot.stat().st_size > 20_000, run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape[1] >= 1200 and pixels.std() > 10 and (pixels < 200).mean() > 0.02  # text and figures

    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    images = re.findall(r"<img\b[^>]*>", dom)
    assert len(images) >= 4
    for tag in images:  # an image that is not an embedded, decodable PNG would render broken
        src = re.search(r'src="data:image/png;base64,([^"]+)"', tag)
        assert src, tag[:200]
        Image.open(io.BytesIO(base64.b64decode(src.group(1)))).verify()


SETTING = {
    "sampler": "ddim",
    "steps": 10,
    "eta": 0.0,
    "guidance": 0.0,
    "spacing": "trailing",
    "variance": "fixed_small",
}


@pytest.fixture(scope="module")
def hand(store):
    """A hand-made experiment in the smoke run's store (its migrations are already paid for): two finished
    jobs made by different code, one failed job."""
    exp = store.experiment_id("hand")
    jobs = [
        {"config_hash": f"h{i}", "arm": f"diffusion.schedule={arm}", "seed": 0, "state": "new"}
        for i, arm in enumerate(("linear", "cosine", "sigmoid"))
    ]
    parent = store.start_run(exp, "parent", {ROLE: "ablation", "harness.profile": "quick"})
    parent.log_dict({"profile": "quick", "jobs": jobs, "settings": [SETTING]}, "plan.json")
    for job, version in zip(jobs[:2], ("v1", "v2")):  # two finished jobs, made by different code
        tags = {
            ROLE: "train",
            HASH: job["config_hash"],
            "harness.arm": job["arm"],
            "harness.seed": 0,
            CODE_VERSION: version,
            COMMIT: f"c-{version}",
        }
        run = store.start_run(exp, job["config_hash"], tags, parent=parent.run_id)
        run.log_params({"train.steps": 10, "train.batch_size": 4, "diffusion.schedule": job["arm"].split("=")[1]})
        run.log_metrics({"train/final_loss": 0.1})
        run.finish("FINISHED")
        ev = store.start_run(
            exp,
            "eval",
            {ROLE: "eval", HASH: job["config_hash"], CODE_VERSION: f"e-{version}", COMMIT: f"c-{version}"},
            parent=run.run_id,
        )
        ev.log_params(SETTING)
        ev.log_metrics({"fid": 50.0, "nfe": 10.0, "num_generated": 16.0, "num_reference": 100.0})
        ev.finish("FINISHED")
    failed = store.start_run(
        exp,
        "h2",
        {
            ROLE: "train",
            HASH: "h2",
            "harness.arm": jobs[2]["arm"],
            "harness.seed": 0,
            ERROR: "non-finite loss at step 3",
        },
        parent=parent.run_id,
    )
    failed.finish("FAILED")
    parent.finish("FAILED")
    return store


def test_loader_carries_code_versions_and_failure_reasons(hand):
    data = load_experiment(hand, "hand")
    assert dict(zip(data.runs["arm_label"], data.runs["code_version"])) == {"linear": "v1", "cosine": "v2"}
    assert dict(zip(data.evals["arm_label"], data.evals["code_version"])) == {"linear": "e-v1", "cosine": "e-v2"}
    assert set(data.evals["commit"]) == {"c-v1", "c-v2"}
    assert data.arms == ["linear", "cosine", "sigmoid"]
    assert [(j["arm"], j["reason"]) for j in data.missing] == [
        ("diffusion.schedule=sigmoid", "failed: non-finite loss at step 3")
    ]
    doc = build_document(data)
    assert doc.answer.split("** ", 1)[1].startswith(  # after the bold verdict
        "This plan has failures: 1 of 3 planned training runs did not finish (sigmoid seed 0: "
        "failed: non-finite loss at step 3)"
    )
    assert "sigmoid: failed: non-finite loss at step 3" in doc.answer
    assert "These results mix 2 versions of the training code" in doc.answer


def test_arm_tags_are_json_and_older_text_tags_still_read():
    from analysis.load import arm_dict, arm_keys, arm_label
    from harness.config.schema import arm_text

    arm = {"model.channel_mult": [1, 2], "diffusion.schedule": "cosine", "train.lr": 0.001}
    tag = json.dumps(arm)  # what jobs.py writes
    assert arm_dict(tag) == arm and arm_keys(tag) == ["model.channel_mult", "diffusion.schedule", "train.lr"]
    assert arm_label(tag) == "[1, 2] / cosine / 0.001"
    legacy = arm_text(arm)  # the text tag of runs tracked before: a list value holds ", " itself
    assert legacy == "model.channel_mult=[1, 2], diffusion.schedule=cosine, train.lr=0.001"
    assert arm_keys(legacy) == arm_keys(tag) and arm_label(legacy) == arm_label(tag)
    assert arm_dict("base") == {} and arm_label("base") == "base" and arm_text({}) == "base"
