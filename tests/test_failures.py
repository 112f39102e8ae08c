"""What happens when things go wrong: missing data, a bad store, a torn checkpoint write, two launches."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml

from harness import checkpoint
from harness.cli import main
from harness.config import build_config
from harness.tracking import ROLE, MlflowStore
from harness.train import train

TINY = {"train.steps": 6, "train.batch_size": 8, "train.warmup_steps": 1, "train.device": "cpu",
        "model.channels": 8, "model.channel_mult": [1, 2], "model.attention_resolutions": [],
        "eval.num_samples": 16, "eval.batch_size": 16}


def _spec(tmp_path, base=None, name="fail"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "question": "q?", "base": base or {"data": {"dataset": "mnist-5k"}},
        "axes": {"grid": {"diffusion.schedule": ["linear", "cosine"]}},
        "evaluate": {"sampler": ["ddim"], "steps": [3]}, "profiles": {"smoke": {"set": TINY}}}))
    return path


def test_missing_data_fails_before_anything_is_tracked(tmp_path, capsys):
    path = _spec(tmp_path, {"data": {"dataset": "mnist", "root": str(tmp_path / "data"), "download": False}})
    db = tmp_path / "store" / "mlflow.db"
    assert main(["run", str(path), "--profile", "smoke", "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train-images-idx3-ubyte" in err and str(tmp_path / "data") in err
    assert not db.parent.exists()


def test_unusable_store_is_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert main(["run", str(_spec(tmp_path)), "--profile", "smoke",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"]) == 2
    assert "cannot create" in capsys.readouterr().err


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


class _NoEvaluation:
    classifier_accuracy = None

    def run(self, model, *, step, tracker):
        return []


def test_training_resumes_from_the_checkpoint_that_survived(tmp_path, monkeypatch):
    config = build_config({"model": {"channels": 8, "channel_mult": [1, 2], "attention_resolutions": []},
                           "train": {"steps": 12, "batch_size": 8, "checkpoint_every": 4, "device": "cpu"}})
    data = SimpleNamespace(images=torch.rand(64, 1, 28, 28) * 2 - 1, labels=torch.arange(64) % 10,
                           num_classes=10, channels=1, image_size=28)
    real_save, calls = checkpoint.save_atomic, []

    def fails_second_time(state, path):
        calls.append(state["step"])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_save(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", fails_second_time)
    with pytest.raises(OSError):
        train(config, None, run_dir=tmp_path, data=data, evaluator=_NoEvaluation(), progress=False)
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "checkpoint.pt")["step"] == 4
    result = train(config, None, run_dir=tmp_path, data=data, evaluator=_NoEvaluation(), progress=False)
    assert result.steps == 12


@pytest.mark.slow
def test_two_launches_train_each_config_once(tmp_path):
    path = _spec(tmp_path, name="twice")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowStore(uri).experiment_id("twice")  # the store exists before the two launches race
    cmd = [sys.executable, "-m", "harness.cli", "run", str(path), "--profile", "smoke", "--tracking-uri", uri]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    store = MlflowStore(uri)
    train_runs = store.runs(store.experiment_id("twice"), {ROLE: "train"})
    assert len(train_runs) == 2 and all(r.info.status == "FINISHED" for r in train_runs)
    assert len({r.data.tags["harness.config_hash"] for r in train_runs}) == 2
    statuses = sorted(line.split()[0] for out, _ in results for line in out.splitlines()
                      if line.split() and line.split()[0] in ("trained", "skipped"))
    assert statuses == ["skipped", "skipped", "trained", "trained"]
