"""What MLflow's own UI needs to compare arms: experiment kind, run names, final metrics on training runs,
dataset inputs, environment tags and system metrics."""

import json
import time

import pytest
from fixtures import TINY, write_spec

from analysis.load import load_experiment
from harness.config import SamplerSetting
from harness.config.schema import (
    ARMS_VIEW,
    CUSTOM_MODEL_DEVELOPMENT,
    ENV,
    EVAL_METRICS,
    EXPERIMENT_KIND,
    ROLE,
    SHARED_VIEW,
    eval_key,
)
from harness.config.spec import load_spec, make_plan
from harness.orchestration.environment import PACKAGES
from harness.orchestration.jobs import log_final_on_training_run, run_name
from harness.orchestration.runner import run_plan
from harness.orchestration.tracking import MlflowStore, SystemMetrics, print_arms_views
from harness.result import EvalResult


def _spec(tmp_path, steps):
    return write_spec(
        tmp_path, "native", question="Does the MLflow UI see it?", evaluate={"sampler": ["ddim"], "steps": steps}
    )


def _run(path, store):
    plan = make_plan(load_spec(path), str(path), "smoke")
    outcomes, _ = run_plan(plan, store, spec_path=str(path), quiet=True)
    assert all(o.status != "failed" for o in outcomes), [o.error for o in outcomes]
    return outcomes


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """A two-arm smoke ablation, then a second launch that adds a setting (evaluated after training)."""
    tmp = tmp_path_factory.mktemp("native")
    store = MlflowStore(f"sqlite:///{tmp / 'mlflow.db'}")
    _run(_spec(tmp, [3]), store)
    outcomes = _run(_spec(tmp, [3, 5]), store)
    assert {o.status for o in outcomes} == {"evaluated"}
    exp = store.client.get_experiment_by_name("native")
    return store, exp, store.runs(exp.experiment_id, {ROLE: "train"})


def test_run_name_is_arm_and_seed():
    assert run_name({"diffusion.schedule": "cosine", "train.lr": 0.001}, 2) == (
        "diffusion.schedule=cosine train.lr=0.001 seed=2"
    )
    assert run_name({}, 0) == "base seed=0"


@pytest.mark.slow  # a smoke ablation (two launches) or a new SQLite store: minutes on 2 shared cores
def test_experiment_opens_as_model_training(ablation, tmp_path):
    store, exp, _ = ablation
    assert exp.tags[EXPERIMENT_KIND] == CUSTOM_MODEL_DEVELOPMENT
    # An experiment made before the tag existed gets it the next time the harness opens it.
    old = store.client.create_experiment("made-by-old-code")
    assert EXPERIMENT_KIND not in store.client.get_experiment(old).tags
    assert store.experiment_id("made-by-old-code") == old
    assert store.client.get_experiment(old).tags[EXPERIMENT_KIND] == CUSTOM_MODEL_DEVELOPMENT


@pytest.mark.slow  # a smoke ablation (two launches) or a new SQLite store: minutes on 2 shared cores
def test_the_arms_view_filters_training_runs_and_groups_by_the_axes(ablation, capsys):
    store, exp, _ = ablation
    view = json.loads(exp.tags[SHARED_VIEW + ARMS_VIEW])
    assert view["searchFilter"] == f"tags.`{ROLE}` = 'train'"
    assert view["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "diffusion.schedule"}]
    # The filter is one MLflow accepts, and it selects exactly the training runs.
    found = store.client.search_runs([exp.experiment_id], view["searchFilter"])
    assert sorted(r.info.run_name for r in found) == sorted(r.info.run_name for r in ablation[2])
    print_arms_views("http://127.0.0.1:5000", store.uri)
    assert capsys.readouterr().out == (
        f"native: http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={ARMS_VIEW}\n"
    )


@pytest.mark.slow  # a smoke ablation (two launches) or a new SQLite store: minutes on 2 shared cores
def test_training_runs_are_named_by_arm_and_seed(ablation):
    _, _, runs = ablation
    assert sorted(r.info.run_name for r in runs) == [
        "diffusion.schedule=cosine seed=0",
        "diffusion.schedule=linear seed=0",
    ]


@pytest.mark.slow  # a smoke ablation (two launches) or a new SQLite store: minutes on 2 shared cores
def test_every_setting_has_its_final_metrics_on_the_training_run(ablation):
    store, _, runs = ablation
    steps = TINY["train.steps"]
    for r in runs:
        for n, in_loop in ((3, True), (5, False)):  # steps=5 was added after training
            label = SamplerSetting(steps=n).label
            for metric in ("fid", "nfe"):
                history = store.client.get_metric_history(r.info.run_id, eval_key(label, metric))
                assert max(m.step for m in history) == steps
                # Each setting has exactly one value at the last step: the loop's, or the one logged after.
                assert [m.step for m in history].count(steps) == 1
                if not in_loop:
                    assert [m.step for m in history] == [steps]
        evals = store.runs(r.info.experiment_id, {ROLE: "eval", "mlflow.parentRunId": r.info.run_id})
        for e in evals:  # the training run's latest value is the evaluation run's final value
            label = SamplerSetting.from_params(e.data.params).label
            for metric in EVAL_METRICS:
                if metric in e.data.metrics:
                    assert r.data.metrics[eval_key(label, metric)] == pytest.approx(e.data.metrics[metric])


@pytest.mark.slow  # a smoke ablation (two launches) or a new SQLite store: minutes on 2 shared cores
def test_the_loader_counts_each_final_evaluation_once(ablation):
    store, _, _ = ablation
    data = load_experiment(store, "native")
    assert len(data.evals) == 4  # 2 arms x 2 settings, read from the evaluation runs only
    assert not data.evals.duplicated(["run_id", "setting"]).any()
    finals = data.curves[data.curves["step"] == TINY["train.steps"]]
    assert not finals.duplicated(["run_id", "setting", "metric"]).any()


@pytest.mark.slow  # a smoke ablation (two launches) or a new SQLite store: minutes on 2 shared cores
def test_dataset_input_and_environment_on_training_runs(ablation, tmp_path):
    store, _, runs = ablation
    for r in runs:
        (inp,) = r.inputs.dataset_inputs
        assert inp.dataset.name == "mnist-5k" and len(inp.dataset.digest) > 0 and inp.dataset.source
        assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "train"
        tags = r.data.tags
        for key in ("python", "torch", "cuda", "device", "device_name", *PACKAGES):
            assert tags[ENV + key], key
        assert tags[ENV + "device"] == "cpu"
        path = store.client.download_artifacts(r.info.run_id, "environment.json", str(tmp_path))
        assert json.load(open(path))["torch"] == tags[ENV + "torch"]


@pytest.mark.slow  # a smoke ablation (two launches) or a new SQLite store: minutes on 2 shared cores
def test_system_metrics_are_logged_by_run_id_and_stop_with_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    store = MlflowStore(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker = store.start_run(store.experiment_id("sys"), "sys", tags={})
    with SystemMetrics(store.uri, tracker.run_id) as sm:
        time.sleep(0.6)
    assert not sm.monitor._process  # finished: no thread left behind
    keys = store.client.get_run(tracker.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in keys and "system/system_memory_usage_megabytes" in keys
    steps = [m.step for m in store.client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")]
    # A resumed run continues the step axis rather than writing over it.
    with SystemMetrics(store.uri, tracker.run_id, resume=True):
        time.sleep(0.3)
    again = [m.step for m in store.client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")]
    assert len(again) > len(steps) and len(set(again)) == len(again)


@pytest.mark.slow  # a smoke ablation (two launches) or a new SQLite store: minutes on 2 shared cores
def test_final_metrics_on_the_training_run_are_logged_once(ablation):
    store, _, runs = ablation
    rid = runs[0].info.run_id
    again = SamplerSetting(steps=5)  # evaluated after training: its finals are on the run already
    log_final_on_training_run(store, rid, EvalResult(4, again, {"fid": 1.0}))
    history = store.client.get_metric_history(rid, eval_key(again.label, "fid"))
    assert len(history) == 1 and history[0].value != 1.0
    new = SamplerSetting(steps=7)
    log_final_on_training_run(store, rid, EvalResult(4, new, {"fid": 2.0}))
    assert [(m.step, m.value) for m in store.client.get_metric_history(rid, eval_key(new.label, "fid"))] == [(4, 2.0)]
