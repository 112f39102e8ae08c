"""Scale-out that cannot corrupt: `--executor slurm` refuses stores kept in local files (unless
`--allow-local-store`), and the locks behind "train once", dead-trial recovery and orphaned parents
(filelock) see other processes, and see them die."""

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from filelock import Timeout

import harness.orchestration.runner
import harness.sweeps.sweep
from harness.cli import main
from harness.config import ConfigError
from harness.config.spec import load_spec, make_plan
from harness.orchestration.runner import close_orphaned_parents, run_plan
from harness.orchestration.store import hold_lock, job_lock, lock_held, lock_path
from harness.sweeps.study import open_storage, retry_dead_trials, trial_lock_name

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
ABLATION, SWEEP = str(EXPERIMENTS / "ablation-schedules.yaml"), str(EXPERIMENTS / "sweep-lr-ema.yaml")
SERVER, POSTGRES = "http://127.0.0.1:5000", "postgresql+psycopg://lab@db.example/optuna"


class Reached(Exception):
    """Raised by the stubbed preflight: the launch got past the store check to the first real work."""


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(harness.orchestration.runner, "preflight", reached)
    monkeypatch.setattr(harness.sweeps.sweep, "preflight", reached)


# -- the refusal ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, named",
    [
        (
            ["run", ABLATION, "--tracking-uri", "sqlite:///{tmp}/mlflow.db"],
            ["tracking store sqlite:///{tmp}/mlflow.db"],
        ),
        (
            ["sweep", SWEEP, "--tracking-uri", "sqlite:///{tmp}/mlflow.db"],
            ["tracking store sqlite:///{tmp}/mlflow.db", "Optuna journal file {tmp}/optuna/sweep-lr-ema.log"],
        ),
        (
            ["sweep", SWEEP, "--tracking-uri", SERVER, "--storage", "{tmp}/study.log"],
            ["Optuna journal file {tmp}/study.log"],
        ),
        (
            ["sweep", SWEEP, "--tracking-uri", SERVER, "--storage", "sqlite:///{tmp}/optuna.db"],
            ["SQLite Optuna storage sqlite:///{tmp}/optuna.db"],
        ),
        (
            ["sweep", SWEEP, "--tracking-uri", "sqlite:///{tmp}/mlflow.db", "--storage", POSTGRES],
            ["tracking store sqlite:///{tmp}/mlflow.db"],
        ),
    ],
)
def test_slurm_refuses_stores_in_local_files(tmp_path, capsys, args, named):
    args = [a.format(tmp=tmp_path) for a in args]
    assert main([*args, "--profile", "smoke", "--executor", "slurm"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: --executor slurm with "), err
    for what in named:
        assert what.format(tmp=tmp_path) in err
    assert "SQLite and file locks are unreliable on NFS" in err and "--allow-local-store" in err
    assert ("--storage postgresql+psycopg://" in err) == any("Optuna" in w for w in named)
    assert ("--tracking-uri http://" in err) == any("tracking store" in w for w in named)
    assert list(tmp_path.iterdir()) == []  # nothing written: no database, no journal, no lock


def test_slurm_refuses_the_default_store_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/default.db")
    assert main(["run", ABLATION, "--profile", "smoke", "--executor", "slurm"]) == 2
    assert f"tracking store sqlite:///{tmp_path}/default.db" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["run", ABLATION, "--executor", "slurm", "--allow-local-store"],
        ["sweep", SWEEP, "--executor", "slurm", "--allow-local-store"],
        ["run", ABLATION, "--executor", "local"],
        ["sweep", SWEEP, "--executor", "local"],
        ["run", ABLATION, "--executor", "slurm", "--tracking-uri", SERVER],
        ["sweep", SWEEP, "--executor", "slurm", "--tracking-uri", SERVER, "--storage", POSTGRES],
    ],
)
def test_shared_stores_local_executors_and_the_flag_pass(tmp_path, args):
    local = [] if "--tracking-uri" in args else ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    with pytest.raises(Reached):
        main([*args, *local, "--profile", "smoke"])


def test_run_plan_refuses_before_it_tracks_anything(tmp_path):
    plan = make_plan(load_spec(ABLATION), ABLATION, "smoke")
    uri = f"sqlite:///{tmp_path}/nowhere/mlflow.db"  # no such store: any use of it would fail
    store = SimpleNamespace(uri=uri)  # the executor's files (submitit's pickles) go under tmp_path/nowhere/
    with pytest.raises(ConfigError, match=re.escape(f"--executor slurm with tracking store {uri}")):
        run_plan(plan, store, spec_path=ABLATION, executor="slurm")
    with pytest.raises(Reached):
        # submitit's in-process cluster: where sbatch is installed (CI installs Slurm) "auto" would submit to it
        run_plan(plan, store, spec_path=ABLATION, executor="slurm", allow_local_store=True, cluster="debug")


# -- the locks ------------------------------------------------------------------------------------------

HOLD = """
import sys, time, filelock
locks = [filelock.FileLock(p) for p in sys.argv[1:]]  # kept: a collected FileLock lets go
for lock in locks:
    lock.acquire()
print(flush=True)
time.sleep(600)
"""


def _holder(*paths: Path) -> subprocess.Popen:
    """Another process that holds the locks at ``paths`` until it is killed."""
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, *map(str, paths)], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def test_a_lock_is_held_while_its_process_lives_and_free_once_it_dies(tmp_path):
    path = lock_path(tmp_path, "x")
    assert not lock_held(path) and not path.exists()  # asking creates nothing
    proc = _holder(path)
    try:
        assert lock_held(path)
        with pytest.raises(Timeout):  # the job lock of another process blocks
            job_lock(tmp_path, "x").acquire(timeout=0.3)
    finally:
        _kill(proc)
    assert not lock_held(path)  # SIGKILL: the OS dropped its lock
    with job_lock(tmp_path, "x"):
        assert lock_held(path)
    mine = hold_lock(tmp_path, "y")  # held by this process: another open of the file sees it too
    assert lock_held(lock_path(tmp_path, "y"))
    mine.release()
    assert not lock_held(lock_path(tmp_path, "y"))


def test_a_running_trial_whose_worker_died_is_failed_and_enqueued_again(tmp_path):
    storage = open_storage(None, tmp_path, "x")  # the journal file: dead workers are found by their lock
    study = optuna.create_study(storage=storage, study_name="s")
    live, dead = (study.ask({"lr": optuna.distributions.FloatDistribution(0, 1)}) for _ in range(2))
    holders = [_holder(lock_path(tmp_path, trial_lock_name("s", t.number))) for t in (live, dead)]
    try:
        assert retry_dead_trials(study, tmp_path) == []  # both workers alive
        _kill(holders[1])
        assert retry_dead_trials(study, tmp_path) == [dead.number]
    finally:
        for h in holders:
            _kill(h)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["RUNNING", "FAIL", "WAITING"]
    assert trials[2].params == dead.params and trials[2].system_attrs["failed_trial"] == dead.number


def test_only_parents_whose_process_died_are_marked_killed(tmp_path):
    runs = [
        SimpleNamespace(info=SimpleNamespace(run_id=r, status=s))
        for r, s in [("live", "RUNNING"), ("dead", "RUNNING"), ("done", "FINISHED")]
    ]
    killed = []
    store = SimpleNamespace(
        runs=lambda experiment_id, tags: runs,
        client=SimpleNamespace(set_terminated=lambda run_id, status: killed.append((run_id, status))),
    )
    live, dead = (lock_path(tmp_path, f"parent-{r}") for r in ("live", "dead"))
    holders = [_holder(live), _holder(dead)]
    try:
        _kill(holders[1])  # its lock file stays behind, unlocked
        close_orphaned_parents(store, "0", tmp_path)
    finally:
        for h in holders:
            _kill(h)
    assert killed == [("dead", "KILLED")]
    assert live.exists() and not dead.exists()


def test_a_report_closes_the_parent_of_a_launch_that_died(tmp_path, capsys):
    """A SIGKILLed launch leaves its parent RUNNING with a free lock: the next `harness report` marks it
    KILLED before reading it, so the report says the plan was KILLED instead of calling it running."""
    from harness.cli import main
    from harness.config.schema import ROLE
    from harness.orchestration.tracking import MlflowStore

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = MlflowStore(uri)
    parent = store.start_run(store.experiment_id("died"), "parent", {ROLE: "ablation"})
    assert main(["report", "--experiment", "died", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    assert store.client.get_run(parent.run_id).info.status == "KILLED"
    assert "the newest harness run of this experiment is KILLED" in (tmp_path / "r" / "report.md").read_text()
