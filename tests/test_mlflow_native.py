"""What MLflow's own UI needs to compare arms: experiment kind, run names, final metrics on training runs,
dataset inputs, environment tags and system metrics; constants as params, sample grids as step-indexed
images, the arms view's columns and order, links in Model training mode, optuna's names and run links."""

import json
import time

import numpy as np
import optuna
import pytest
from fixtures import TINY, write_spec

from analysis.grids import LOGGED_GRID
from analysis.load import load_experiment
from harness.config import SamplerSetting
from harness.config.schema import (
    ARMS_VIEW,
    CONSTANT_METRICS,
    CUSTOM_MODEL_DEVELOPMENT,
    ENV,
    EVAL_METRICS,
    EXPERIMENT_KIND,
    PARENT,
    ROLE,
    SHARED_VIEW,
    eval_key,
)
from harness.config.spec import load_spec, make_plan
from harness.evaluation.evaluate import grid_key
from harness.orchestration.environment import PACKAGES
from harness.orchestration.job_runs import log_final_on_training_run, run_name
from harness.orchestration.mlflow_ui import (
    BY_RUN_NAME,
    LOCAL_UI,
    NOTE,
    VIEW_METRICS,
    arms_view_url,
    run_url,
    ui_server,
)
from harness.orchestration.runner import run_plan
from harness.orchestration.tracking import MlflowStore, SystemMetrics, print_arms_views
from harness.result import EvalResult
from harness.sweeps.search import load_sweep
from harness.sweeps.study import create_study


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


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One new SQLite store for the tests of single tracking calls (creating one takes seconds)."""
    return MlflowStore(f"sqlite:///{tmp_path_factory.mktemp('calls') / 'mlflow.db'}")


def _open(store, name):
    tracker = store.start_run(store.experiment_id("calls"), name, tags={})
    return tracker, tracker.run_id


def test_constant_evaluation_metrics_are_params_and_the_others_curves(store):
    tracker, rid = _open(store, "constants")
    for step, fid in ((2, 9.0), (4, 7.5)):
        tracker.log_metrics(
            {eval_key("ddim-3", "fid"): fid, eval_key("ddim-3", "nfe"): 3.0, eval_key("ddim-3", "num_generated"): 16},
            step=step,
        )
    run = store.client.get_run(rid)
    assert run.data.params == {eval_key("ddim-3", "nfe"): "3", eval_key("ddim-3", "num_generated"): "16"}
    assert set(run.data.metrics) == {eval_key("ddim-3", "fid")}
    history = store.client.get_metric_history(rid, eval_key("ddim-3", "fid"))
    assert sorted((m.step, m.value) for m in history) == [(2, 9.0), (4, 7.5)]


def test_the_learning_rate_is_a_curve_only_once_it_varies(store):
    flat, flat_id = _open(store, "constant lr")
    warm, warm_id = _open(store, "warmup")
    for step in (1, 2, 3):
        flat.log_metrics({"train/lr": 1e-3}, step=step)
        warm.log_metrics({"train/lr": min(1.0, step / 2) * 1e-3}, step=step)  # two warmup steps
    assert "train/lr" not in store.client.get_run(flat_id).data.metrics  # it is the train.lr param
    curve = lambda rid: [(m.step, m.value) for m in store.client.get_metric_history(rid, "train/lr")]  # noqa: E731
    assert sorted(curve(warm_id)) == [(1, 5e-4), (2, 1e-3), (3, 1e-3)]
    # Resumed (a new tracker on the same run): a curve goes on, a constant stays unlogged.
    store.resume_run(warm_id).log_metrics({"train/lr": 1e-3}, step=4)
    store.resume_run(flat_id).log_metrics({"train/lr": 1e-3}, step=4)
    assert sorted(curve(warm_id))[-1] == (4, 1e-3)
    assert curve(flat_id) == []


def test_sample_grids_are_step_indexed_images_the_report_can_read(store):
    tracker, rid = _open(store, "grids")
    grid = np.zeros((8, 8, 3), dtype=np.uint8)
    for step in (2, 4):
        tracker.log_image(grid, grid_key("ddim-3"), step)
    run = store.client.get_run(rid)
    assert run.data.tags["mlflow.loggedImages"] == "True"  # what makes the UI draw an image chart
    found = [LOGGED_GRID.match(a.path) for a in store.client.list_artifacts(rid, "images")]
    assert sorted((m["label"], int(m["step"])) for m in found if m) == [("ddim-3", 2), ("ddim-3", 4)]


def test_the_view_sorts_by_name_and_shows_the_first_settings_metrics(store):
    exp = store.experiment_id("calls")
    assert store.client.get_experiment(exp).tags[EXPERIMENT_KIND] == CUSTOM_MODEL_DEVELOPMENT
    store.share_arms_view(exp, ["diffusion.schedule"], "ddim-3")
    view = json.loads(store.client.get_experiment(exp).tags[SHARED_VIEW + ARMS_VIEW])
    assert view["selectedColumns"] == ["attributes.`Dataset`"] + [f"metrics.`eval/ddim-3/{m}`" for m in VIEW_METRICS]
    assert (view["orderByKey"], view["orderByAsc"]) == ("tags.`mlflow.runName`", True)
    # The sort key is one MLflow's search accepts, and it orders by run name.
    names = [r.info.run_name for r in store.client.search_runs([exp], order_by=[f"{BY_RUN_NAME} ASC"])]
    assert names == sorted(names) and len(names) >= 3


def test_every_link_opens_in_model_training_mode():
    assert ui_server("sqlite:////tmp/m.db") == LOCAL_UI
    assert ui_server("http://mlflow-host:5000/") == "http://mlflow-host:5000"
    assert (
        run_url("http://h:5000", "3", "abc") == "http://h:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert arms_view_url("http://h:5000/", "3", charts=True) == (
        "http://h:5000/#/experiments/3/runs?workflowType=machine_learning"
        f"&viewStateShareKey={ARMS_VIEW}&compareRunsMode=CHART"
    )


def test_optuna_names_the_objective_by_its_metric(tmp_path):
    from test_sweep import _write

    sweep = load_sweep(_write(tmp_path), "smoke")
    study = create_study(sweep, optuna.storages.InMemoryStorage())
    assert study.metric_names == ["fid"]


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
    # Its metric columns are the first setting's finals, which every training run has.
    columns = [c.removeprefix("metrics.`").rstrip("`") for c in view["selectedColumns"] if c.startswith("metrics.")]
    assert columns == [eval_key(SamplerSetting(steps=3).label, m) for m in VIEW_METRICS]
    assert all(set(columns) <= set(r.data.metrics) for r in ablation[2])
    # The filter is one MLflow accepts, and it selects exactly the training runs.
    found = store.client.search_runs([exp.experiment_id], view["searchFilter"])
    assert sorted(r.info.run_name for r in found) == sorted(r.info.run_name for r in ablation[2])
    print_arms_views("http://127.0.0.1:5000", store.uri)
    assert capsys.readouterr().out == (
        f"native: http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={ARMS_VIEW}\n"
    )


@pytest.mark.slow  # a smoke ablation (two launches) or a new SQLite store: minutes on 2 shared cores
def test_the_launch_says_what_it_is_and_links_the_arms_view(ablation):
    store, exp, runs = ablation
    parent = store.client.get_run(runs[0].data.tags[PARENT])
    assert parent.data.tags[ROLE] == "ablation"
    note = parent.data.tags[NOTE]
    assert "trained nothing itself" in note and f"({arms_view_url(LOCAL_UI, exp.experiment_id)})" in note


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
            history = store.client.get_metric_history(r.info.run_id, eval_key(label, "fid"))
            assert max(m.step for m in history) == steps
            # Each setting has exactly one value at the last step: the loop's, or the one logged after.
            assert [m.step for m in history].count(steps) == 1
            if not in_loop:
                assert [m.step for m in history] == [steps]
            # Its constants are params (no flat charts): the sampler's network evaluations, the sample count.
            assert r.data.params[eval_key(label, "nfe")] == str(n)
            assert r.data.params[eval_key(label, "num_generated")] == str(TINY["eval.num_samples"])
            assert eval_key(label, "nfe") not in r.data.metrics
        evals = store.runs(r.info.experiment_id, {ROLE: "eval", "mlflow.parentRunId": r.info.run_id})
        for e in evals:  # the training run's latest value is the evaluation run's final value
            label = SamplerSetting.from_params(e.data.params).label
            for metric in EVAL_METRICS:
                if metric in CONSTANT_METRICS:
                    assert float(r.data.params[eval_key(label, metric)]) == e.data.metrics[metric]
                elif metric in e.data.metrics:
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


@pytest.mark.slow  # a one-trial smoke sweep: a minute on 2 shared cores
def test_each_trial_links_its_mlflow_run_for_optuna_dashboard(tmp_path):
    from test_sweep import SEARCH, _write

    from harness.orchestration.store import store_root
    from harness.sweeps.study import open_storage
    from harness.sweeps.sweep import run_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = _write(tmp_path, {**SEARCH, "n_trials": 1})
    result = run_sweep(path, profile="smoke", tracking_uri=uri, overrides={"train.device": "cpu"})
    assert result.ok, result.worker_errors
    study = optuna.load_study(study_name=result.study_name, storage=open_storage(None, store_root(uri), "tiny-sweep"))
    (trial,) = study.trials
    run = MlflowStore(uri).client.get_run(trial.user_attrs["mlflow_run_id"])
    assert study.metric_names == ["fid"]
    assert trial.user_attrs["mlflow_run"] == run_url(LOCAL_UI, run.info.experiment_id, run.info.run_id)
