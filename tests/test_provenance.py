"""Provenance: runs record the code that made them, and finished runs of other code are not reused."""

import shutil

import pytest
import yaml
from fixtures import write_spec

import harness.orchestration.runner as runner
from harness.config.schema import CODE_VERSION, COMMIT, ROLE
from harness.config.spec import load_spec, make_plan
from harness.orchestration.placement import resolve_plan
from harness.orchestration.provenance import code_version, source_hash
from harness.orchestration.runner import run_plan
from harness.orchestration.tracking import MlflowStore

SMOKE = {"train.steps": 2, "train.eval_every": 0}  # the tiny model, trained 2 steps, evaluated at the end


def _copy_sources(tmp_path):
    import analysis
    import harness

    for pkg in (harness, analysis):
        src = pkg.__path__[0]
        shutil.copytree(src, tmp_path / pkg.__name__, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "README.md").write_text("# readme\n")
    return {"harness": tmp_path / "harness", "analysis": tmp_path / "analysis"}


def test_code_version_changes_with_a_source_file_and_not_with_the_readme(tmp_path):
    roots = _copy_sources(tmp_path)
    before = source_hash(roots)
    assert before == code_version()  # the installed packages hash the same as their copy
    (tmp_path / "README.md").write_text("# a new README\n")
    (tmp_path / "harness" / "__pycache__").mkdir()
    (tmp_path / "harness" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert source_hash(roots) == before
    samplers = tmp_path / "harness" / "diffusion" / "samplers.py"
    samplers.write_text(samplers.read_text() + "\n# a fixed bug\n")
    assert source_hash(roots) != before
    samplers.rename(tmp_path / "harness" / "diffusion" / "samplers2.py")  # a rename is a change of code too
    assert source_hash(roots) != before


def _spec(tmp_path, name="prov"):
    evaluate = {"sampler": ["ddim"], "steps": [2]}
    return write_spec(tmp_path, name, SMOKE, question="Is a stale run reused?", axes={}, evaluate=evaluate)


def _run(path, store, **kw):
    plan = make_plan(load_spec(path), str(path), "smoke")
    return run_plan(plan, store, spec_path=str(path), quiet=True, **kw)


def test_runs_made_by_other_code_are_retrained_unless_reuse_any(tmp_path, monkeypatch):
    store = MlflowStore(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    path = _spec(tmp_path)
    monkeypatch.setattr(runner, "code_version", lambda: "aaaaaaaaaaaa")
    [first], _ = _run(path, store)
    assert first.status == "trained"
    exp = store.experiment_id("prov")
    [train] = store.runs(exp, {ROLE: "train"})
    [ev] = store.runs(exp, {ROLE: "eval"})
    assert train.data.tags[CODE_VERSION] == ev.data.tags[CODE_VERSION] == "aaaaaaaaaaaa"
    assert COMMIT in train.data.tags

    [same], _ = _run(path, store)
    assert same.status == "skipped"  # same code: nothing to do

    monkeypatch.setattr(runner, "code_version", lambda: "bbbbbbbbbbbb")
    [kept], _ = _run(path, store, reuse="any")
    assert kept.status == "skipped" and kept.run_id == train.info.run_id
    rows = runner.describe(resolve_plan(make_plan(load_spec(path), str(path), "smoke"))[0], store)
    assert rows[0]["state"] == "stale"
    [again], _ = _run(path, store)
    assert again.status == "trained" and again.run_id != train.info.run_id
    assert "made by code aaaaaaaaaaaa, now bbbbbbbbbbbb" in again.note
    newest = store.runs(exp, {ROLE: "train"})[0]
    assert newest.data.tags[CODE_VERSION] == "bbbbbbbbbbbb"
    assert {e.data.tags[CODE_VERSION] for e in store.runs(exp, {ROLE: "eval"})} == {"aaaaaaaaaaaa", "bbbbbbbbbbbb"}
    [done], _ = _run(path, store)
    assert done.status == "skipped"
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "question": "A reworded question?"}))
    [reworded], _ = _run(path, store)  # the question is not code: nothing re-runs
    assert reworded.status == "skipped"


def test_two_settings_that_differ_only_in_variance_are_two_evaluations(tmp_path):
    store = MlflowStore(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    evaluate = {"sampler": ["ddpm"], "steps": [3], "variance": ["fixed_small", "fixed_large"]}
    path = write_spec(tmp_path, "variance", SMOKE, question="fixed_small or fixed_large?", axes={}, evaluate=evaluate)
    plan = make_plan(load_spec(path), str(path), "smoke")
    assert [s["variance"] for s in plan.settings] == ["fixed_small", "fixed_large"]
    [out], _ = run_plan(plan, store, spec_path=str(path), quiet=True)
    assert out.status == "trained" and len(out.evals) == 2
    evals = store.runs(store.experiment_id("variance"), {ROLE: "eval"})
    assert sorted(e.data.params["variance"] for e in evals) == ["fixed_large", "fixed_small"]
    fids = {e.data.params["variance"]: e.data.metrics["fid"] for e in evals}
    assert fids["fixed_small"] != fids["fixed_large"]  # sampled differently, not one setting logged twice
    [again], _ = run_plan(plan, store, spec_path=str(path), quiet=True)
    assert again.status == "skipped"

    from analysis.load import load_experiment

    data = load_experiment(store, "variance")
    assert sorted(data.evals["variance"]) == ["fixed_large", "fixed_small"]
    assert len(set(data.evals["setting"])) == 2


@pytest.mark.parametrize(
    "params,label",
    [
        ({"sampler": "ddpm", "steps": "3", "eta": "0.0", "guidance": "0.0", "spacing": "trailing"}, "ddpm-3-eta0-w0"),
        ({"sampler": "ddpm", "steps": "3", "variance": "fixed_large"}, "ddpm-3-eta0-w0-fixed_large"),
    ],
)
def test_settings_rebuild_from_logged_params(params, label):
    from harness.config import SamplerSetting

    s = SamplerSetting.from_params(params)
    assert s.label == label and SamplerSetting.from_params(s.model_dump()).key == s.key
