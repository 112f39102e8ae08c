"""Provenance: runs record the code that determines them; a result is redone only when that code changed."""

import shutil

import pytest
import yaml
from fixtures import write_spec

import harness.orchestration.runner as runner
from harness.config.schema import CODE_VERSION, COMMIT, ROLE
from harness.config.spec import load_spec, make_plan
from harness.orchestration.placement import resolve_plan
from harness.orchestration.provenance import CodeVersion, code_version, code_version_of
from harness.orchestration.runner import run_plan
from harness.orchestration.tracking import MlflowStore

SMOKE = {"train.steps": 2, "train.eval_every": 0}  # the tiny model, trained 2 steps, evaluated at the end


def _edit(path):
    path.write_text(path.read_text() + "\n# an edit\n")


def test_each_result_is_keyed_by_the_code_that_determines_it(tmp_path):
    import harness

    root = tmp_path / "harness"
    shutil.copytree(harness.__path__[0], root, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_version_of(root)
    assert before == code_version()  # the installed package hashes the same as its copy
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    never_numbers = ("cli.py", "orchestration/runner.py", "sweeps/sweep.py", "tools/bench.py", "config/spec.py")
    for never in (*never_numbers, "training/autotune.py"):  # autotune: its choice is in the config's hash
        _edit(root / never)  # what runs and how it is shown, never what a number is
    assert code_version_of(root) == before
    _edit(root / "evaluation" / "metrics.py")  # re-evaluates, does not retrain
    evaluated = code_version_of(root)
    assert evaluated.train == before.train and evaluated.eval != before.eval
    _edit(root / "diffusion" / "processes.py")  # retrains (and so re-evaluates)
    retrained = code_version_of(root)
    assert retrained.train != before.train and retrained.eval != evaluated.eval
    (root / "diffusion" / "samplers.py").rename(root / "diffusion" / "samplers2.py")  # a rename is a change too
    assert code_version_of(root).train != retrained.train


def _spec(tmp_path, name="prov"):
    evaluate = {"sampler": ["ddim"], "steps": [2]}
    return write_spec(tmp_path, name, SMOKE, question="Is a stale run reused?", axes={}, evaluate=evaluate)


def _run(path, store, **kw):
    plan = make_plan(load_spec(path), str(path), "smoke")
    return run_plan(plan, store, spec_path=str(path), quiet=True, **kw)


def test_an_evaluation_edit_re_evaluates_and_a_training_edit_retrains(tmp_path, monkeypatch):
    store = MlflowStore(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    path = _spec(tmp_path)
    monkeypatch.setattr(runner, "code_version", lambda: CodeVersion("train-aaaaa1", "eval-aaaaaa1"))
    [first], _ = _run(path, store)
    assert first.status == "trained"
    exp = store.experiment_id("prov")
    [train] = store.runs(exp, {ROLE: "train"})
    [ev] = store.runs(exp, {ROLE: "eval"})
    assert train.data.tags[CODE_VERSION] == "train-aaaaa1" and ev.data.tags[CODE_VERSION] == "eval-aaaaaa1"
    assert COMMIT in train.data.tags

    [same], _ = _run(path, store)
    assert same.status == "skipped"  # same code (an edit of analysis/, the CLI, ...): nothing to do
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "question": "A reworded question?"}))
    [reworded], _ = _run(path, store)  # the question is not code: nothing re-runs
    assert reworded.status == "skipped"

    # evaluation/ changed: the model is kept, its settings are evaluated again
    monkeypatch.setattr(runner, "code_version", lambda: CodeVersion("train-aaaaa1", "eval-bbbbbb2"))
    [evaluated], _ = _run(path, store)
    assert evaluated.status == "evaluated" and evaluated.run_id == train.info.run_id
    assert {e.data.tags[CODE_VERSION] for e in store.runs(exp, {ROLE: "eval"})} == {"eval-aaaaaa1", "eval-bbbbbb2"}

    # the training code changed: retrained, unless --reuse any
    monkeypatch.setattr(runner, "code_version", lambda: CodeVersion("train-ccccc3", "eval-cccccc3"))
    [kept], _ = _run(path, store, reuse="any")
    assert kept.status == "skipped" and kept.run_id == train.info.run_id
    rows = runner.describe(resolve_plan(make_plan(load_spec(path), str(path), "smoke"))[0], store)
    assert rows[0]["state"] == "stale"
    [again], _ = _run(path, store)
    assert again.status == "trained" and again.run_id != train.info.run_id
    assert "made by training code train-aaaaa1, now train-ccccc3" in again.note
    assert store.runs(exp, {ROLE: "train"})[0].data.tags[CODE_VERSION] == "train-ccccc3"
    [done], _ = _run(path, store)
    assert done.status == "skipped"


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


# eval_every 0: only the final evaluation, whose values on the training run (its one-point curve, the threshold
# table) are not replaced when it is redone.
@pytest.mark.parametrize("eval_every", [1, 0], ids=["periodic", "final only"])
def test_a_reused_model_keeps_the_curve_its_own_code_scored_and_the_report_says_so(tmp_path, monkeypatch, eval_every):
    from analysis.caveats import curve_sentence
    from analysis.load import load_experiment
    from harness.config.schema import CURVE_CODE

    store = MlflowStore(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    evaluate = {"sampler": ["ddim"], "steps": [2]}
    path = write_spec(
        tmp_path, "curves", {**SMOKE, "train.eval_every": eval_every}, question="Curves?", axes={}, evaluate=evaluate
    )
    monkeypatch.setattr(runner, "code_version", lambda: CodeVersion("train-aaaaa1", "eval-aaaaaa1"))
    _run(path, store)
    [train] = store.runs(store.experiment_id("curves"), {ROLE: "train"})
    assert train.data.tags[CURVE_CODE] == "eval-aaaaaa1"
    assert curve_sentence(load_experiment(store, "curves")) is None  # curve and final evaluation: one code

    monkeypatch.setattr(runner, "code_version", lambda: CodeVersion("train-aaaaa1", "eval-bbbbbb2"))
    [evaluated], _ = _run(path, store)
    assert evaluated.status == "evaluated"  # the model is kept, so its curve is the old code's
    words = curve_sentence(load_experiment(store, "curves"))
    assert "of 1 of 1 training runs (base seed 0) were scored by evaluation code eval-aaaaaa1, not" in words, words
    assert "unknown" not in words and "--force" in words

    store.client.delete_tag(train.info.run_id, CURVE_CODE)  # a run tracked before the tag existed
    words = curve_sentence(load_experiment(store, "curves"))
    assert 'by evaluation code unknown, not the code of their final evaluations ("unknown": tracked before' in words

    monkeypatch.setattr(runner, "code_version", lambda: CodeVersion("train-ccccc3", "eval-cccccc3"))
    [again], _ = _run(path, store)  # retrained: curve and final evaluation by one code again
    assert again.status == "trained" and curve_sentence(load_experiment(store, "curves")) is None
