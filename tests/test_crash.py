"""A `harness run` killed with SIGKILL mid-training, then started again, loses nothing."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from harness.runner import store_root
from harness.spec import load_spec, make_plan
from harness.tracking import HASH, ROLE, MlflowStore

SPEC = {
    "name": "crash", "question": "Does a killed run resume?", "base": {"data": {"dataset": "mnist-5k"}},
    "seeds": [0], "evaluate": {"sampler": ["ddim"], "steps": [3]},
    "profiles": {"smoke": {"set": {
        "train.steps": 300, "train.batch_size": 8, "train.warmup_steps": 1, "train.checkpoint_every": 20,
        "train.log_every": 5, "train.device": "cpu", "model.channels": 8, "model.channel_mult": [1, 2],
        "model.attention_resolutions": [], "eval.num_samples": 16, "eval.batch_size": 16}}},
}


def _harness(*args):
    return [sys.executable, "-m", "harness.cli", *args]


@pytest.mark.slow
def test_sigkill_then_rerun_finishes_one_run_per_hash(tmp_path):
    spec_path = tmp_path / "crash.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = make_plan(load_spec(spec_path), str(spec_path), "smoke").jobs[0]
    ckpt = store_root(uri) / "checkpoints" / job.config_hash / "checkpoint.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_harness("run", str(spec_path), "--profile", "smoke", "--tracking-uri", uri),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, killed_at = time.time() + 180, None
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                step = torch.load(ckpt, weights_only=True)["step"]
            except Exception:  # noqa: BLE001 - caught mid-rename; try again
                step = 0
            if 40 <= step < 300:
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None, "the run finished before it could be killed"

    store = MlflowStore(uri)
    exp = store.experiment_id("crash")
    assert [r.info.status for r in store.runs(exp, {ROLE: "train"})] == ["RUNNING"]  # what SIGKILL leaves

    again = subprocess.run(_harness("run", str(spec_path), "--profile", "smoke", "--tracking-uri", uri),
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    train_runs = store.runs(exp, {ROLE: "train", HASH: job.config_hash})
    assert [r.info.status for r in train_runs] == ["FINISHED"]  # the same run, resumed
    all_runs = store.client.search_runs([exp], max_results=1000)
    assert not [r for r in all_runs if r.info.status == "RUNNING"]
    steps = {m.step for m in store.client.get_metric_history(train_runs[0].info.run_id, "train/loss")}
    assert steps == set(range(1, 301))
