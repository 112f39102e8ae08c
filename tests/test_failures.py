"""What happens when things go wrong: missing data, a bad store, a torn checkpoint write, two launches."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import proc
import pytest
import torch
from fixtures import TINY_MODEL, write_spec

from harness.cli import main
from harness.config import build_config
from harness.config.schema import ROLE
from harness.orchestration.tracking import MlflowStore
from harness.tracker import MemoryTracker, StoreUnavailable
from harness.training import checkpoint
from harness.training.train import NoEvaluation, train


def _spec(tmp_path, base=None, name="fail"):
    smoke = {"train.steps": 6, "train.eval_every": 0}
    return write_spec(tmp_path, name, smoke, question="q?", base=base or {"data": {"dataset": "mnist-5k"}})


def test_missing_data_fails_before_anything_is_tracked(tmp_path, capsys):
    path = _spec(tmp_path, {"data": {"dataset": "mnist", "root": str(tmp_path / "data"), "download": False}})
    db = tmp_path / "store" / "mlflow.db"
    assert main(["run", str(path), "--profile", "smoke", "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train-images-idx3-ubyte" in err and str(tmp_path / "data") in err
    assert not db.parent.exists()


def test_unusable_store_is_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert (
        main(
            [
                "run",
                str(_spec(tmp_path)),
                "--profile",
                "smoke",
                "--tracking-uri",
                f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}",
            ]
        )
        == 2
    )
    assert "a-file is a file, not a directory" in capsys.readouterr().err


def test_corrupt_store_file_is_one_line_that_says_what_is_wrong(tmp_path, capsys):
    (tmp_path / "mlflow.db").write_text("not a database")
    argv = ["run", str(_spec(tmp_path)), "--profile", "smoke", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not an SQLite database" in err
    assert (tmp_path / "mlflow.db").read_text() == "not a database"


def test_unreachable_server_is_one_line(tmp_path, capsys):
    assert main(["run", str(_spec(tmp_path)), "--profile", "smoke", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tracking store http://127.0.0.1:9 is not usable" in err


def test_torn_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_atomic({"step": 10, "w": torch.ones(3)}, path)

    def dies_half_way(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError):
        checkpoint.save_atomic({"step": 20, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def _tiny_run(**train):
    """A 12-step fp32 CPU config of the tiny model and 64 random images in memory (no data set read)."""
    fields = {"steps": 12, "batch_size": 8, "device": "cpu", "precision": "fp32", "memory_format": "contiguous"}
    config = build_config({"model": TINY_MODEL, "train": {**fields, **train}})
    images, labels = torch.rand(64, 1, 28, 28) * 2 - 1, torch.arange(64) % 10
    return config, SimpleNamespace(images=images, labels=labels, num_classes=10, channels=1, image_size=28)


def test_training_resumes_from_the_checkpoint_that_survived(tmp_path, monkeypatch):
    config, data = _tiny_run(checkpoint_every=4)
    real_save, calls = checkpoint.save_atomic, []

    def fails_second_time(state, path):
        calls.append(state["step"])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_save(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", fails_second_time)
    with pytest.raises(OSError):
        train(config, None, run_dir=tmp_path, data=data, evaluator=NoEvaluation(), progress=False)
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "checkpoint.pt")["step"] == 4
    result = train(config, None, run_dir=tmp_path, data=data, evaluator=NoEvaluation(), progress=False)
    assert result.steps == 12


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    for step in (10, 20):
        checkpoint.save_atomic({"step": step, "w": torch.full((100,), float(step))}, path)
    assert checkpoint.load(path)["step"] == 20 and checkpoint.load(checkpoint.previous(path))["step"] == 10
    path.write_bytes(path.read_bytes()[:300])  # torn by a crash of the file system, not by our write
    assert checkpoint.load(path)["step"] == 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: checkpoint.pt is unreadable") and "(step 10)" in err
    checkpoint.previous(path).write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint in"):
        checkpoint.load(path)


class _StoreGoesAway(MemoryTracker):
    """A tracker whose store stops answering once ``fail_at`` is reached (a mid-run server death)."""

    def __init__(self, fail_at):
        super().__init__()
        self.fail_at = fail_at

    def log_series(self, key, values, steps):
        if max(steps) >= self.fail_at:
            raise StoreUnavailable("tracking server unreachable: http://127.0.0.1:1 (log_batch: Connection refused)")
        super().log_series(key, values, steps)


def test_training_checkpoints_and_stops_when_the_store_goes_away(tmp_path):
    config, data = _tiny_run(checkpoint_every=100, log_every=3)
    tracker = _StoreGoesAway(fail_at=7)
    with pytest.raises(StoreUnavailable, match="tracking server unreachable"):
        train(config, tracker, run_dir=tmp_path / "a", data=data, evaluator=NoEvaluation(), progress=False)
    assert checkpoint.load(tmp_path / "a" / "checkpoint.pt")["step"] == 9  # the work is kept
    tracker.fail_at = 10**9  # the server is back
    train(config, tracker, run_dir=tmp_path / "a", data=data, evaluator=NoEvaluation(), progress=False)
    whole = MemoryTracker()
    train(config, whole, run_dir=tmp_path / "b", data=data, evaluator=NoEvaluation(), progress=False)
    assert tracker.metrics["train/loss"] == whole.metrics["train/loss"]  # steps 7-9 too, once each


def _open_store(uri, go, results):
    go.wait()
    try:
        results.put(MlflowStore(uri).experiment_id("first"))
    except Exception as err:  # noqa: BLE001 - reported to the test
        results.put(f"{type(err).__name__}: {str(err).splitlines()[-1][:200]}")


@pytest.mark.slow
def test_first_use_of_a_new_store_by_several_processes_at_once(tmp_path):
    ctx = multiprocessing.get_context("fork")  # forked after mlflow is imported: they reach the store together
    go, results = ctx.Event(), ctx.Queue()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [ctx.Process(target=_open_store, args=(uri, go, results)) for _ in range(3)]
    for p in procs:
        p.start()
    go.set()
    got = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    assert len(set(got)) == 1 and got[0].isdigit(), got  # today: alembic "Online migration expected ..."


@pytest.mark.slow
def test_two_launches_train_each_config_once(tmp_path):
    path = _spec(tmp_path, name="twice")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a new store: the two launches also race to create it
    cmd = [sys.executable, "-m", "harness.cli", "run", str(path), "--profile", "smoke", "--tracking-uri", uri]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    store = MlflowStore(uri)
    train_runs = store.runs(store.experiment_id("twice"), {ROLE: "train"})
    assert len(train_runs) == 2 and all(r.info.status == "FINISHED" for r in train_runs)
    assert len({r.data.tags["harness.config_hash"] for r in train_runs}) == 2
    statuses = sorted(
        line.split()[0]
        for out, _ in results
        for line in out.splitlines()
        if line.split() and line.split()[0] in ("trained", "skipped")
    )
    assert statuses == ["skipped", "skipped", "trained", "trained"]


POOL = """
import os, time
from harness.orchestration.executors import worker_pool
pool = worker_pool(2)
seen = set()
while len(seen) < 2:  # until both workers have started (and run their initializer)
    seen |= {f.result() for f in [pool.submit(os.getpid) for _ in range(2)]}
futures = [pool.submit(time.sleep, 600) for _ in range(2)]
print(*sorted(seen), flush=True)
time.sleep(600)
"""


def test_workers_die_with_the_launching_process():
    parent = subprocess.Popen([sys.executable, "-c", POOL], stdout=subprocess.PIPE, text=True)
    workers = []
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(map(proc.alive, workers))
        time.sleep(0.5)  # let them start their tasks
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while any(map(proc.alive, workers)) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(map(proc.alive, workers))
    finally:
        parent.kill()
        proc.kill_all(workers)
