"""`--executor slurm` on a real Slurm, not submitit's in-process `debug` cluster: a one-node cluster on localhost
(tests/slurm_cluster.py) runs a smoke ablation and a smoke sweep, then the faults a cluster has: a running job
preempted and requeued (`scontrol requeue`), one cancelled (`scancel`), the node drained under them. Each job ends
resumed once in its own MLflow run (every training step logged once), nothing is left RUNNING in MLflow or in the
queue, and the parent's summary counts what happened.

Skips, with the reason, where Slurm is absent; `.ci/run` installs it (Debian's slurmctld, slurmd, slurmdbd, munge
and mariadb-server). About 6 minutes on 2 cores, most of it the jobs' start-up (Python, torch, MLflow).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import shipped_spec
from slurm_cluster import NODE, PARTITION, missing, slurm_cluster

from harness.config.schema import HASH, ROLE
from harness.config.spec import load_spec, make_plan
from harness.orchestration.placement import resolve_plan
from harness.orchestration.store import store_root
from harness.orchestration.tracking import MlflowStore

REPO = Path(__file__).parents[1]
# One CPU per job: the node's two run side by side, and a third waits for a free one.
SLURM = {"partition": PARTITION, "cpus_per_task": 1, "timeout_min": 15}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=missing() or "")]


@pytest.fixture(scope="module")
def cluster():
    with slurm_cluster() as c:
        yield c


def _spec(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump({**data, "slurm": SLURM}))
    return path


def _harness(cluster, *args: str, wait: bool = True, timeout_s: float = 420):
    """``harness <args> --executor slurm`` on the cluster, with a SQLite store: one node shares no file system."""
    cmd = [sys.executable, "-m", "harness.cli", *args, "--executor", "slurm", "--allow-local-store"]
    env = {
        **cluster.env,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


def _nothing_left(cluster, store: MlflowStore, exp: str) -> None:
    """No run RUNNING, no job in the queue, and every job the cluster accounted for ran on its node."""
    assert not [r.info.run_id for r in store.client.search_runs([exp], max_results=1000) if r.info.status == "RUNNING"]
    # The launch returns when a job's result file appears; the job's process still has to exit (torch and MLflow
    # tear down, seconds under load), so the queue empties a moment later. A job that stays is still a failure.
    deadline = time.monotonic() + 60
    while (queued := cluster.jobs()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert queued == []
    nodes = cluster.run("sacct", "-n", "-X", "-P", "-o", "NodeList").split()
    assert nodes and set(nodes) == {NODE}


def _summary(out: str) -> str:
    return re.search(r"^summary: (.*); parent run", out, re.M).group(1)


def test_smoke_ablation(cluster, tmp_path):
    path = _spec(tmp_path, {**shipped_spec("ablation-schedules.yaml"), "name": "slurm-ablation"})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _harness(cluster, "run", str(path), "--profile", "smoke", "--tracking-uri", uri)
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()
    assert _summary(done.stdout) == "2 trained, 0 evaluated, 0 skipped, 0 failed"
    store = MlflowStore(uri)
    exp = store.experiment_id("slurm-ablation")
    assert [r.info.status for r in store.runs(exp, {ROLE: "ablation"})] == ["FINISHED"]
    assert [r.info.status for r in store.runs(exp, {ROLE: "train"})] == ["FINISHED", "FINISHED"]
    _nothing_left(cluster, store, exp)


def test_smoke_sweep(cluster, tmp_path):
    path = _spec(tmp_path, {**shipped_spec("sweep-lr-ema.yaml"), "name": "slurm-sweep"})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _harness(cluster, "sweep", str(path), "--profile", "smoke", "--workers", "2", "--tracking-uri", uri)
    assert done.returncode == 0, done.stdout + done.stderr + cluster.logs()
    store = MlflowStore(uri)
    exp = store.experiment_id("slurm-sweep")
    trains = store.runs(exp, {ROLE: "train"})
    assert [r.info.status for r in trains] == ["FINISHED", "FINISHED"]  # the smoke profile's two trials
    assert [r.info.status for r in store.client.search_runs([exp]) if r.data.tags.get(ROLE) == "sweep"] == ["FINISHED"]
    _nothing_left(cluster, store, exp)


# -- faults ------------------------------------------------------------------------------------------------

STEPS = 120  # long enough to fault between the first checkpoint and the end
FAULTS = {
    "name": "slurm-faults",
    "question": "Does a job that Slurm requeues, cancels or holds on a drained node resume once?",
    "base": {"data": {"dataset": "mnist-5k"}},
    "seeds": [0, 1, 2],
    "evaluate": {"sampler": ["ddim"], "steps": [3]},
    "profiles": {
        "smoke": {
            "set": {
                "train.steps": STEPS,
                "train.batch_size": 8,
                "train.warmup_steps": 1,
                "train.checkpoint_every": 20,
                "train.log_every": 20,  # few writes to SQLite: four jobs share it
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


def _step(ckpt: Path) -> int:
    try:
        return torch.load(ckpt, weights_only=True)["step"]
    except Exception:  # noqa: BLE001 - not there yet, or caught mid-rename
        return 0


def _until(what: str, ready, launch: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if launch.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"waiting for {what}: launch exit {launch.poll()}: {launch.stderr.read()[-3000:]}")
        time.sleep(0.05)


def _until_accounted(cluster, job_id: str, states: list[str], timeout_s: float = 30) -> None:
    """sacct records a job's end a moment after its result file appears, which is when the launch returns."""
    deadline = time.monotonic() + timeout_s
    while (seen := cluster.accounted(job_id)) != states and time.monotonic() < deadline:
        time.sleep(0.5)
    assert seen == states, job_id


def _array(cluster) -> dict[int, dict[str, str]]:
    """The tasks of the launch's job array by index (the plan's job order)."""
    return {int(j["id"].split("_")[1]): j for j in cluster.jobs() if re.fullmatch(r"\d+_\d+", j["id"])}


def test_requeue_cancel_and_drain_each_resume_once(cluster, tmp_path):
    path = _spec(tmp_path, FAULTS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    jobs = resolve_plan(make_plan(load_spec(path), str(path), "smoke"))[0].jobs  # the hashes the launch uses
    ckpts = [store_root(uri) / "checkpoints" / FAULTS["name"] / j.config_hash / "checkpoint.pt" for j in jobs]
    launch = _harness(cluster, "run", str(path), "--profile", "smoke", "--tracking-uri", uri, wait=False)
    try:
        # Jobs 0 and 1 train side by side (a CPU each); job 2 waits for a CPU.
        _until("jobs 0 and 1 to checkpoint", lambda: _step(ckpts[0]) >= 20 and _step(ckpts[1]) >= 20, launch)
        tasks = _array(cluster)
        assert [tasks[i]["state"] for i in range(3)] == ["RUNNING", "RUNNING", "PENDING"], tasks
        requeued, cancelled = tasks[0]["id"], tasks[1]["id"]

        cluster.run("scontrol", "update", f"nodename={NODE}", "state=drain", "reason=maintenance")
        assert cluster.node_state() == "draining"  # the running jobs go on
        cluster.run("scontrol", "requeue", requeued)  # preempted: SIGTERM, SIGKILL, back in the queue
        cluster.run("scancel", cancelled)
        _until("the node to drain", lambda: cluster.node_state() == "drained", launch, 60)
        time.sleep(3)
        tasks = _array(cluster)  # nothing starts on a drained node
        assert [tasks[i]["state"] for i in (0, 2)] == ["PENDING", "PENDING"] and 1 not in tasks, tasks
        assert _step(ckpts[2]) == 0 and STEPS > _step(ckpts[0]) >= 20

        cluster.run("scontrol", "update", f"nodename={NODE}", "state=resume")
        # Slurm holds a requeued job back for a while (reason BeginTime); an operator may release it at once.
        cluster.run("scontrol", "update", f"jobid={requeued}", "starttime=now")
        out, err = launch.communicate(timeout=900)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.communicate()
    assert launch.returncode == 1, out + err + cluster.logs()  # one job failed: the cancelled one
    assert _summary(out) == "2 trained, 0 evaluated, 0 skipped, 1 failed", out + err
    assert f"failed {jobs[1].config_hash} seed=1: Slurm job {cancelled} ended without a result (state: CANCELLED" in err
    _until_accounted(cluster, requeued, ["REQUEUED", "COMPLETED"])
    _until_accounted(cluster, cancelled, ["CANCELLED"])
    store = MlflowStore(uri)
    exp = store.experiment_id(FAULTS["name"])
    assert [r.info.status for r in store.runs(exp, {ROLE: "ablation"})] == ["FAILED"]
    (killed,) = store.runs(exp, {ROLE: "train", HASH: jobs[1].config_hash})  # closed by the launcher, not RUNNING
    assert killed.info.status == "KILLED" and "CANCELLED" in killed.data.tags["harness.stopped"]

    again = _harness(cluster, "run", str(path), "--profile", "smoke", "--tracking-uri", uri)
    assert again.returncode == 0, again.stdout + again.stderr + cluster.logs()
    assert _summary(again.stdout) == "1 trained, 0 evaluated, 2 skipped, 0 failed"  # only the cancelled job
    parents = store.runs(exp, {ROLE: "ablation"})
    assert sorted(r.info.status for r in parents) == ["FAILED", "FINISHED"]
    for job in jobs:
        (run,) = store.runs(exp, {ROLE: "train", HASH: job.config_hash})  # the same run, resumed
        assert run.info.status == "FINISHED"
        steps = [m.step for m in store.client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, STEPS + 1)), job.seed  # each step once: nothing lost, nothing twice
    _nothing_left(cluster, store, exp)
