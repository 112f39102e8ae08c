"""Specs -> plans -> jobs -> MLflow: the runner on tiny jobs and a throwaway SQLite store."""

import shutil

import pytest
from fixtures import write_spec

from harness.config import ConfigError
from harness.config.schema import HASH, ROLE
from harness.config.spec import Axes, expand_arms, load_spec, make_plan
from harness.orchestration.runner import run_plan
from harness.orchestration.store import store_root
from harness.orchestration.tracking import MlflowStore


def _spec(tmp_path, **changes):
    return write_spec(tmp_path, **changes)


def _run(path, store, **kw):
    plan = make_plan(load_spec(path), str(path), "smoke", kw.pop("overrides", None))
    return run_plan(plan, store, spec_path=str(path), quiet=True, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return MlflowStore(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")


def test_axes_grid_zip_include_exclude():
    axes = Axes(
        grid={"a": [1, 2]},
        zip=[{"b": [3, 4], "c": [5, 6]}],
        exclude=[{"a": 2, "b": 4}],
        include=[{"a": 9, "b": 9, "c": 9}],
    )
    assert expand_arms(axes) == [
        {"a": 1, "b": 3, "c": 5},
        {"a": 1, "b": 4, "c": 6},
        {"a": 2, "b": 3, "c": 5},
        {"a": 9, "b": 9, "c": 9},
    ]


def test_plan_resolves_every_job(tmp_path):
    plan = make_plan(load_spec(_spec(tmp_path, seeds=[0, 1])), "tiny.yaml", "smoke")
    assert [(j.arm["diffusion.schedule"], j.seed) for j in plan.jobs] == [
        ("linear", 0),
        ("linear", 1),
        ("cosine", 0),
        ("cosine", 1),
    ]
    assert len({j.config_hash for j in plan.jobs}) == 4 and plan.jobs[0].config.train.steps == 4


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"axes": {"grid": {"diffusion.schedule": ["linear", "quadratic"]}}}, "unknown schedule 'quadratic'"),
        ({"evaluate": {"sampler": ["ddim"], "steps": [5000]}}, "5000 is above diffusion.timesteps"),
        ({"evaluate": {"guidance": [1.0]}}, "needs model.conditional: true"),
        (
            {"axes": {"grid": {"diffusion.schedule": ["linear", "linear"]}}},
            "two arms resolve to the same configuration",
        ),
    ],
)
def test_invalid_plans_name_the_field(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        make_plan(load_spec(_spec(tmp_path, **changes)), "tiny.yaml", "smoke")


def test_run_tracks_parent_train_and_eval_runs_and_never_retrains(tmp_path, store):
    path = _spec(tmp_path)
    outcomes, parent = _run(path, store)
    assert [o.status for o in outcomes] == ["trained", "trained"]
    exp = store.experiment_id("tiny")
    train_runs = store.runs(exp, {ROLE: "train"})
    assert len(train_runs) == 2 and all(r.info.status == "FINISHED" for r in train_runs)
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in train_runs)
    run = train_runs[0]
    assert run.data.params["diffusion.schedule"] in ("linear", "cosine") and run.data.params["train.steps"] == "4"
    assert {"harness.role", "harness.config_hash", "harness.spec", "git.commit"} <= set(run.data.tags)
    assert "train/loss" in run.data.metrics and "eval/ddim-3-eta0-w0/fid" in run.data.metrics
    history = store.client.get_metric_history(run.info.run_id, "eval/ddim-3-eta0-w0/recognizability")
    assert sorted(m.step for m in history) == [2, 4]
    evals = store.runs(exp, {ROLE: "eval"})
    assert len(evals) == 2 and {e.data.tags["mlflow.parentRunId"] for e in evals} == {r.info.run_id for r in train_runs}
    # Evaluated at the end of training: the training run's wall time holds it, so its own run starts after
    # the training run ended and adds no time of its own.
    ended = {r.info.run_id: r.info.end_time for r in train_runs}
    assert all(e.info.start_time >= ended[e.data.tags["mlflow.parentRunId"]] for e in evals)
    assert evals[0].data.params["sampler"] == "ddim" and "fid" in evals[0].data.metrics

    again, _ = _run(path, store)  # everything is done: nothing trains
    assert [o.status for o in again] == ["skipped", "skipped"]
    more, _ = _run(_spec(tmp_path, evaluate={"sampler": ["ddim", "heun"], "steps": [3]}), store)
    assert [o.status for o in more] == ["evaluated", "evaluated"]  # only the new setting, on the checkpoint
    assert len(store.runs(exp, {ROLE: "train"})) == 2 and len(store.runs(exp, {ROLE: "eval"})) == 4
    # Evaluated after training: its run's wall time is its compute (loading, sampling, metrics), so reports
    # count it in "separate evaluation runs".
    heun = [e for e in store.runs(exp, {ROLE: "eval"}) if e.data.params["sampler"] == "heun"]
    assert len(heun) == 2
    assert all(e.info.end_time - e.info.start_time >= 1000 * e.data.metrics["sample_seconds"] for e in heun)


def test_failed_job_does_not_stop_the_others(tmp_path, store):
    path = _spec(tmp_path, name="tiny-fail", axes={"grid": {"train.lr": [1.0e-3, 1.0e30]}})
    outcomes, _ = _run(path, store)
    status = {o.arm["train.lr"]: o for o in outcomes}
    assert status[1.0e-3].status == "trained"
    assert status[1.0e30].status == "failed" and "non-finite loss at step" in status[1.0e30].error
    runs = store.runs(store.experiment_id("tiny-fail"), {ROLE: "train", HASH: status[1.0e30].config_hash})
    assert runs[0].info.status == "FAILED" and "non-finite" in runs[0].data.tags["harness.error"]


def test_slurm_executor_through_submitit(tmp_path, store):
    path = _spec(tmp_path, name="tiny-slurm", axes={"grid": {"diffusion.schedule": ["linear"]}})
    outcomes, _ = _run(path, store, executor="slurm", cluster="debug", allow_local_store=True)  # one node here
    assert [o.status for o in outcomes] == ["trained"]


def test_finished_run_whose_checkpoint_is_gone_evaluates_its_logged_weights_else_says_retrain(tmp_path, store):
    one = {"grid": {"diffusion.schedule": ["linear"]}}
    outcomes, _ = _run(_spec(tmp_path, name="tiny-gone", axes=one), store)
    assert [o.status for o in outcomes] == ["trained"]
    run_dir = store_root(store.uri) / "checkpoints" / "tiny-gone" / outcomes[0].config_hash
    shutil.rmtree(run_dir)
    more, _ = _run(
        _spec(tmp_path, name="tiny-gone", axes=one, evaluate={"sampler": ["ddim", "heun"], "steps": [3]}), store
    )
    assert [o.status for o in more] == ["evaluated"]  # with the EMA weights the training run logged
    assert (run_dir / "ema.pt").is_file() and not (run_dir / "checkpoint.pt").exists()
    shutil.rmtree(run_dir)
    (logged,) = (store_root(store.uri) / "artifacts" / "tiny-gone").rglob("ema.pt")  # weights/ema.pt of the run
    logged.unlink()
    last, _ = _run(
        _spec(tmp_path, name="tiny-gone", axes=one, evaluate={"sampler": ["ddim", "heun"], "steps": [3, 4]}), store
    )
    assert [o.status for o in last] == ["failed"]
    assert last[0].error.startswith("checkpoint missing: retrain with --force") and "\n" not in last[0].error


def test_auto_is_measured_once_and_plan_json_names_the_hashes_the_runs_carry(tmp_path, store, monkeypatch):
    import json

    from harness.orchestration import placement
    from harness.training import autotune

    monkeypatch.delenv(autotune.OFF)
    monkeypatch.setattr(autotune, "native_bf16", lambda device: False)
    monkeypatch.setattr(placement, "autotune_cache", lambda: tmp_path / "autotune")
    calls = []

    def probe(config, device, options):  # channels_last measured twice as fast
        calls.append([autotune.name(c) for c in options])
        return {"fp32": 1.0, "fp32+channels_last": 0.5}

    monkeypatch.setattr(autotune, "probe", probe)
    outcomes, parent = _run(_spec(tmp_path, name="tiny-auto"), store)
    assert [o.status for o in outcomes] == ["trained", "trained"]
    assert calls == [["fp32", "fp32+channels_last"]]  # two arms of one model shape: one probe
    artifacts = store.client.download_artifacts(parent, "", str(tmp_path))
    plan = json.loads((tmp_path / "plan.json").read_text())
    probes = json.loads((tmp_path / "autotune.json").read_text())["probes"]
    assert [p["choice"] for p in probes] == ["fp32+channels_last"] and artifacts
    runs = store.runs(store.experiment_id("tiny-auto"), {ROLE: "train"})
    assert (
        {r.data.tags[HASH] for r in runs}
        == {j["config_hash"] for j in plan["jobs"]}
        == {o.config_hash for o in outcomes}
    )
    assert {(r.data.params["train.precision"], r.data.params["train.memory_format"]) for r in runs} == {
        ("fp32", "channels_last")
    }


def test_arms_that_auto_makes_one_configuration_are_refused_before_anything_is_tracked(tmp_path, store):
    path = _spec(tmp_path, name="tiny-collapse", axes={"grid": {"train.precision": ["auto", "fp32"]}})
    with pytest.raises(
        ConfigError, match=r"tiny-collapse.yaml: axes: arms .* are one configuration here \(auto resolved to fp32"
    ):
        _run(path, store)
    assert store.client.get_experiment_by_name("tiny-collapse") is None
