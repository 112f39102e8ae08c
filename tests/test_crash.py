"""A `harness run` whose process or tracking server dies mid-training loses nothing when started again:
its workers stop with it, the rerun resumes from the checkpoints in the same MLflow runs, logs every
step once, and leaves no run RUNNING."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import proc
import pytest
import torch
import yaml
from fixtures import free_port, start_mlflow_server, stop_server

from harness.config.schema import HASH, ROLE
from harness.config.spec import load_spec, make_plan
from harness.orchestration.placement import resolve_plan
from harness.orchestration.store import store_root
from harness.orchestration.tracking import MlflowStore

STEPS = 300
SPEC = {
    "name": "crash",
    "question": "Does a killed run resume?",
    "base": {"data": {"dataset": "mnist-5k"}},
    "seeds": [0, 1],
    "evaluate": {"sampler": ["ddim"], "steps": [3]},
    "cpu_jobs": 2,
    "profiles": {
        "smoke": {
            "set": {
                "train.steps": STEPS,
                "train.batch_size": 8,
                "train.warmup_steps": 1,
                "train.checkpoint_every": 20,
                "train.log_every": 5,
                "train.device": "cpu",
                "model.channels": 8,
                "model.channel_mult": [1, 2],
                "model.attention_resolutions": [],
                "eval.num_samples": 16,
                "eval.batch_size": 16,
            }
        }
    },
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _harness(*args):
    return [sys.executable, "-m", "harness.cli", *args]


def _setup(tmp_path, uri, name="crash"):
    spec_path = tmp_path / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump({**SPEC, "name": name}))
    plan, _ = resolve_plan(make_plan(load_spec(spec_path), str(spec_path), "smoke"))  # the hashes the run uses
    jobs = plan.jobs
    ckpts = [store_root(uri) / "checkpoints" / name / j.config_hash / "checkpoint.pt" for j in jobs]
    return spec_path, jobs, ckpts


def _step(ckpt) -> int:
    try:
        return torch.load(ckpt, weights_only=True)["step"]
    except Exception:  # noqa: BLE001 - not there yet, or caught mid-rename
        return 0


def _wait_for_training(proc_, ckpts, deadline_s=300) -> None:
    """Until every job has a checkpoint at step 40 or later (and the run is not finished)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline and proc_.poll() is None:
        if all(40 <= _step(c) < STEPS for c in ckpts):
            return
        time.sleep(0.05)
    pytest.fail(
        f"the run did not reach step 40 while running (exit {proc_.poll()}): "
        f"{proc_.stderr.read()[-2000:] if proc_.poll() is not None else ''}"
    )


def _assert_resumed_once(store, exp, jobs, run_ids=None) -> None:
    for job in jobs:
        train_runs = store.runs(exp, {ROLE: "train", HASH: job.config_hash})
        assert [r.info.status for r in train_runs] == ["FINISHED"]  # the same run, resumed
        if run_ids:
            assert train_runs[0].info.run_id == run_ids[job.config_hash]
        steps = [m.step for m in store.client.get_metric_history(train_runs[0].info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, STEPS + 1))  # each step once: nothing lost, nothing logged twice
    assert not [r for r in store.client.search_runs([exp], max_results=1000) if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_sigkill_stops_the_workers_and_the_rerun_resumes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec_path, jobs, ckpts = _setup(tmp_path, uri)
    run = subprocess.Popen(
        _harness("run", str(spec_path), "--profile", "smoke", "--tracking-uri", uri),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers = []
    try:
        _wait_for_training(run, ckpts)
        workers = proc.spawned_workers(run.pid)
        assert len(workers) == 2
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.time() + 10
        while any(map(proc.alive, workers)) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(map(proc.alive, workers)), "workers live on after their parent was killed"
    finally:
        run.kill()
        proc.kill_all(workers)

    store = MlflowStore(uri)
    exp = store.experiment_id("crash")
    assert [r.info.status for r in store.runs(exp, {ROLE: "train"})] == ["RUNNING", "RUNNING"]  # what SIGKILL leaves
    again = subprocess.run(
        _harness("run", str(spec_path), "--profile", "smoke", "--tracking-uri", uri),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    _assert_resumed_once(store, exp, jobs)


def _server(tmp_path, port):
    """An MLflow tracking server on 127.0.0.1:port whose artifacts the clients write directly (not proxied)."""
    artifacts = ("--default-artifact-root", str(tmp_path / "server-artifacts"))
    return start_mlflow_server(port, f"sqlite:///{tmp_path / 'server.db'}", *artifacts, log=tmp_path / "server.log")


@pytest.mark.slow
def test_tracking_server_dies_mid_run_then_the_rerun_resumes(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    # With a server, checkpoints live under the repository's mlruns/: a name of its own keeps this test's
    # apart from real runs, and the test removes them.
    name = f"crash-server-{port}"
    spec_path, jobs, ckpts = _setup(tmp_path, uri, name)
    server = _server(tmp_path, port)
    cmd = _harness("run", str(spec_path), "--profile", "smoke", "--tracking-uri", uri)
    try:
        run = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for_training(run, ckpts)
            store = MlflowStore(uri)
            exp = store.experiment_id(name)
            run_ids = {r.data.tags[HASH]: r.info.run_id for r in store.runs(exp, {ROLE: "train"})}
            stop_server(server)
            out, err = run.communicate(timeout=300)
        finally:
            run.kill()
        assert run.returncode != 0
        assert err.count("\n") == 1 and err.startswith(f"error: tracking server unreachable: {uri}"), err
        assert "Traceback" not in out + err and "worker died" not in out
        assert out.count("tracking server unreachable") == 2  # each job says why it stopped
        assert all(_step(c) >= 40 for c in ckpts)

        server = _server(tmp_path, port)
        again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        _assert_resumed_once(store, exp, jobs, run_ids)
    finally:
        stop_server(server)
        shutil.rmtree(ckpts[0].parents[1], ignore_errors=True)
        for job in jobs:
            (store_root(uri) / "locks" / f"{job.config_hash}.lock").unlink(missing_ok=True)


def test_a_run_whose_only_checkpoint_is_unreadable_restarts_in_a_new_run(tmp_path, monkeypatch, capsys):
    """Issue 29: a kill during the first save (or a truncated file) used to fail the job until --force; now the file
    is moved aside with one warning, the old run ends KILLED and the job trains again from step 0 in a new run."""
    from fixtures import TINY

    from harness.config import load_config
    from harness.config.schema import STOPPED
    from harness.orchestration.single import train_tracked
    from harness.training import checkpoint

    fixed = ["train.precision=fp32", "train.memory_format=contiguous", "eval.samplers=[{sampler: ddim, steps: 3}]"]
    config = load_config(None, [*(f"{k}={json.dumps(v)}" for k, v in TINY.items()), *fixed])
    uri, run_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "run"
    store = MlflowStore(uri)
    real_save = checkpoint.save_atomic

    def torn_first_save(state, path):
        real_save(state, path)
        path.write_bytes(path.read_bytes()[:300])  # what a crash of the file system leaves of the first save
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint, "save_atomic", torn_first_save)
    with pytest.raises(OSError):
        train_tracked(config, run_dir, store, "torn")
    monkeypatch.undo()
    exp = store.experiment_id("torn")
    (failed,) = store.runs(exp, {ROLE: "train"})
    assert failed.info.status == "FAILED" and sorted(p.name for p in run_dir.iterdir() if p.is_file()) == [
        "checkpoint.pt"
    ]
    capsys.readouterr()
    out = train_tracked(config, run_dir, store, "torn")
    err = capsys.readouterr().err
    assert out.status == "trained" and out.summary["train"]["steps"] == 4
    assert err.count("warning: no readable checkpoint") == 1 and "training starts again at step 0" in err
    runs = {r.info.run_id: r for r in store.runs(exp, {ROLE: "train"})}
    assert runs[out.run_id].info.status == "FINISHED"
    old = runs[failed.info.run_id]
    assert old.info.status == "KILLED" and "retrained from step 0 in a new run" in old.data.tags[STOPPED]
    steps = [m.step for m in store.client.get_metric_history(out.run_id, "train/loss")]
    assert steps == [1, 2, 3, 4]  # each step once, in the new run
    (aside,) = (run_dir / checkpoint.ASIDE).iterdir()
    assert aside.name.endswith("-unreadable") and (aside / "checkpoint.pt").stat().st_size == 300
