"""Ctrl-C and SIGTERM (harness/stop.py): the first stops every job within seconds, checkpointed, with the runs and
the parent KILLED and a summary; the rerun resumes each job once; a second Ctrl-C stops at once."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from fixtures import write_spec
from test_train import TINY as TINY_TRAIN
from test_train import NoEvaluation, _data, _state

from harness import stop
from harness.config import build_config
from harness.config.schema import HASH, ROLE
from harness.orchestration.tracking import MlflowStore
from harness.tracker import MemoryTracker
from harness.training.train import train

STEPS = 20_000  # far more than a test waits for: every job is still training when the signal comes


@pytest.fixture(autouse=True)
def fresh_request():
    stop.reset()
    yield
    stop.reset()


def test_a_stop_request_checkpoints_at_the_next_step_and_the_resumed_run_equals_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    config = build_config({**TINY_TRAIN, "train": {**TINY_TRAIN["train"], "steps": 20}})  # logs at 7, 10, 17, 20
    a, b = MemoryTracker(), MemoryTracker()
    full = train(config, a, run_dir=tmp_path / "a", data=_data(), evaluator=NoEvaluation(), progress=False)
    calls = []

    def requested_before_step_17() -> bool:  # asked once per step, at its start: True once 16 steps are done
        calls.append(1)
        return len(calls) > 16

    monkeypatch.setattr(stop, "requested", requested_before_step_17)
    with pytest.raises(stop.Stopped, match="stopped at step 16 of 20"):
        train(config, b, run_dir=tmp_path / "b", data=_data(), evaluator=NoEvaluation(), progress=False)
    saved = _state(tmp_path / "b")
    assert saved["step"] == 16  # checkpointed where it stopped, not at the last due checkpoint (10)
    assert len(saved["unlogged"]["losses"]) == 6 and [s for s, _ in b.metrics["train/loss"]] == list(range(1, 11))
    monkeypatch.undo()
    resumed = train(config, b, run_dir=tmp_path / "b", data=_data(), evaluator=NoEvaluation(), progress=False)
    sa, sb = _state(tmp_path / "a"), _state(tmp_path / "b")
    for name in sa["model"]:
        assert torch.equal(sa["model"][name], sb["model"][name]), name
    # Steps 11-16 were trained but not logged before the stop: the resumed run logs them, once, with their values.
    assert [s for s, _ in b.metrics["train/loss"]] == list(range(1, 21))
    assert a.metrics["train/loss"] == b.metrics["train/loss"]
    # final_loss is the mean of the last log interval, which a stop between logs shortens: not compared.
    assert resumed.steps == full.steps == 20


# -- a real launch: 4 jobs on 2 workers, interrupted by Ctrl-C at the terminal (SIGINT to the process group) ------


def _launch(spec, uri):
    cmd = [sys.executable, "-m", "harness.cli", "run", str(spec), "--profile", "smoke", "--tracking-uri", uri]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_AUTOTUNE": "off"}
    # A session of its own: the test sends the terminal's Ctrl-C to its whole process group, workers included.
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _training(store, name) -> list:
    """The training runs that have logged a loss: they are inside the training loop."""
    exp = store.client.get_experiment_by_name(name)
    runs = store.runs(exp.experiment_id, {ROLE: "train"}) if exp else []
    return [r for r in runs if r.info.status == "RUNNING" and "train/loss" in r.data.metrics]


def _wait_until_training(launch, store, name, n, timeout=300):
    deadline = time.time() + timeout
    while len(_training(store, name)) < n:
        assert launch.poll() is None, launch.communicate()[1][-3000:]
        assert time.time() < deadline, "the jobs never started training"
        time.sleep(0.5)


@pytest.mark.slow
def test_ctrl_c_stops_four_jobs_on_two_workers_within_seconds_and_the_rerun_resumes_each_once(tmp_path):
    steps = 300  # long enough to be interrupted mid-training, short enough to finish on the rerun
    spec = write_spec(
        tmp_path,
        name="ctrlc",
        seeds=[0, 1],
        cpu_jobs=2,
        smoke={"train.steps": steps, "train.eval_every": 0, "train.log_every": 5},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = MlflowStore(uri)
    launch = _launch(spec, uri)
    try:
        _wait_until_training(launch, store, "ctrlc", 2)
        sent = time.time()
        os.killpg(launch.pid, signal.SIGINT)
        jobs_stopped = None  # when no training run is RUNNING any more
        while launch.poll() is None and time.time() - sent < 60:
            exp = store.client.get_experiment_by_name("ctrlc")
            running = [r for r in store.runs(exp.experiment_id, {ROLE: "train"}) if r.info.status == "RUNNING"]
            if not running and jobs_stopped is None:
                jobs_stopped = time.time() - sent
            time.sleep(0.25)
        out, err = launch.communicate(timeout=60)
        exited = time.time() - sent
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
    assert launch.returncode == 130, err[-3000:]
    print(f"jobs stopped {jobs_stopped:.1f} s after Ctrl-C, the launcher exited after {exited:.1f} s")
    # The bound; on a machine shared with other loads the launcher's exit (MLflow, torch teardown) lags.
    assert jobs_stopped is not None and jobs_stopped < 10, f"{jobs_stopped} s to stop the jobs: {err[-3000:]}"
    assert exited < 30
    assert "no job starts now" in err and "interrupted: " in err and "run the same command again" in err
    assert "2 stopped, 2 not started" in err, err[-2000:]
    exp = store.experiment_id("ctrlc")
    train_runs = store.runs(exp, {ROLE: "train"})
    assert len(train_runs) == 2 and {r.info.status for r in train_runs} == {"KILLED"}
    assert all("stopped at step" in r.data.tags["harness.stopped"] for r in train_runs)
    (parent,) = store.runs(exp, {ROLE: "ablation"})
    assert parent.info.status == "KILLED"
    stopped = {r.data.tags[HASH]: r.info.run_id for r in train_runs}

    rerun = _launch(spec, uri)
    out, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err[-3000:]
    assert "summary: 4 trained" in out
    train_runs = store.runs(exp, {ROLE: "train"})
    assert len(train_runs) == 4 and {r.info.status for r in train_runs} == {"FINISHED"}  # one run per job
    for h, run_id in stopped.items():  # the stopped jobs resumed in their own runs, from their checkpoints
        (run,) = store.runs(exp, {ROLE: "train", HASH: h})
        assert run.info.run_id == run_id
        history = store.client.get_metric_history(run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, steps + 1))  # every step logged once
    assert [r.info.status for r in store.runs(exp, {ROLE: "ablation"})] == ["FINISHED", "KILLED"]
