"""The team setup for real: a PostgreSQL cluster (started in a temporary directory on a free port) behind an
`mlflow server` with an artifact destination, and as Optuna's RDB storage for a sweep with two workers.

Skips, with the reason, where PostgreSQL (Debian's `postgresql`: initdb, pg_ctl) or psycopg (the
`[postgres]` extra) is missing; `.ci/run` installs both, so CI runs it.
"""

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import yaml
from fixtures import free_port, mlflow_server, shipped_spec

from harness.config.schema import ROLE, STUDY
from harness.config.spec import load_spec, make_plan
from harness.orchestration.placement import resolve_plan
from harness.orchestration.store import lock_path, store_root
from harness.orchestration.tracking import MlflowStore

REPO = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.slow


def _pg_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian puts it (newest version first)."""
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


def _as_user() -> dict:
    """subprocess arguments that run PostgreSQL as a non-root user: initdb and postgres refuse root."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):  # Debian's package creates postgres
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    pytest.skip("running as root and there is no postgres or nobody user to run PostgreSQL as")


@pytest.fixture(scope="module")
def postgres():
    """``postgresql+psycopg://harness@127.0.0.1:<port>`` of a throwaway cluster with databases mlflow and optuna."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (initdb, pg_ctl): apt-get install postgresql")
    user = _as_user()
    home = Path(tempfile.mkdtemp(prefix="harness-pg-"))  # in /tmp: the postgres user can reach it
    if user:
        os.chown(home, user["user"], user["group"])
    data, port = home / "data", free_port()

    def pg(*args):
        done = subprocess.run(args, cwd=home, capture_output=True, text=True, timeout=120, **user)
        assert done.returncode == 0, done.stdout + done.stderr

    try:
        # trust: only this machine's loopback can reach it, for the few minutes the test runs
        pg(initdb, "-D", str(data), "-U", "harness", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
        options = f"-h 127.0.0.1 -p {port} -k {home} -F"  # -F: no fsync, a throwaway cluster
        pg(pg_ctl, "-D", str(data), "-l", str(home / "server.log"), "-o", options, "-w", "-t", "60", "start")
        url = f"postgresql+psycopg://harness@127.0.0.1:{port}"
        with psycopg.connect(f"host=127.0.0.1 port={port} user=harness dbname=postgres", autocommit=True) as conn:
            for db in ("mlflow", "optuna"):
                conn.execute(f"CREATE DATABASE {db}")
        yield url
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([pg_ctl, "-D", str(data), "-m", "immediate", "stop"], cwd=home, capture_output=True, **user)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """An MLflow tracking server on a free loopback port: runs in PostgreSQL, artifacts in a temporary folder."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    with mlflow_server(
        tmp_path_factory.mktemp("server"), f"{postgres}/mlflow", "--artifacts-destination", str(artifacts)
    ) as url:
        yield url, artifacts


def _spec_copy(tmp_path: Path, shipped: str, name: str) -> Path:
    """A shipped spec under a name of its own: with a server, checkpoints live under the repository's mlruns/."""
    spec = shipped_spec(shipped)  # with experiments/profiles/, which a copy elsewhere does not find
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**spec, "name": name}))
    return path


def _harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900
    )


def _clean(uri: str, name: str, lock_names) -> None:
    shutil.rmtree(store_root(uri) / "checkpoints" / name, ignore_errors=True)
    for lock in lock_names:
        lock_path(store_root(uri), lock).unlink(missing_ok=True)


def test_smoke_ablation_tracked_by_a_server_on_postgresql(server, postgres, tmp_path):
    import psycopg

    uri, artifacts = server
    name = f"pg-schedules-{uri.rsplit(':', 1)[1]}"
    path = _spec_copy(tmp_path, "ablation-schedules.yaml", name)
    jobs = resolve_plan(make_plan(load_spec(path), str(path), "smoke"))[0].jobs  # the hashes the run resolves to
    locks = [j.config_hash for j in jobs]
    try:
        done = _harness("run", str(path), "--profile", "smoke", "--tracking-uri", uri)
        assert done.returncode == 0, done.stderr[-3000:]
        store = MlflowStore(uri)
        exp = store.experiment_id(name)
        runs = {role: store.runs(exp, {ROLE: role}) for role in ("ablation", "train", "eval")}
        locks += [f"parent-{r.info.run_id}" for r in runs["ablation"]]
        assert [len(runs[r]) for r in ("ablation", "train", "eval")] == [1, len(jobs), len(jobs)]
        assert all(r.info.status == "FINISHED" for rs in runs.values() for r in rs)
        # They are rows in PostgreSQL, and the parent's artifacts are files in the server's destination.
        with psycopg.connect(postgres.replace("postgresql+psycopg", "postgresql") + "/mlflow") as conn:
            rows = conn.execute(
                "SELECT count(*) FROM runs JOIN experiments USING (experiment_id) WHERE experiments.name = %s", (name,)
            ).fetchone()[0]
        assert rows == 1 + 2 * len(jobs)
        assert len(list(artifacts.rglob("plan.json"))) == 1
    finally:
        _clean(uri, name, locks)


def test_sweep_with_two_workers_on_postgresql_storage(server, postgres, tmp_path):
    uri, _ = server
    name = f"pg-sweep-{uri.rsplit(':', 1)[1]}"
    path = _spec_copy(tmp_path, "sweep-lr-ema.yaml", name)
    storage = f"{postgres}/optuna"
    hashes: list[str] = []
    study_name = f"{name}-smoke"
    try:
        done = _harness(
            "sweep", str(path), "--profile", "smoke", "--workers", "2", "--storage", storage, "--tracking-uri", uri
        )
        assert done.returncode == 0, done.stderr[-3000:]
        study = optuna.load_study(study_name=study_name, storage=storage)
        hashes = [t.user_attrs["config_hash"] for t in study.trials]
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]  # the smoke profile's n_trials
        store = MlflowStore(uri)
        trial_runs = store.runs(store.experiment_id(name), {ROLE: "trial", STUDY: study_name})
        assert sorted(int(r.data.tags["harness.trial"]) for r in trial_runs) == [0, 1]
        assert all(r.info.status == "FINISHED" for r in trial_runs)
        assert f"study in postgresql+psycopg://127.0.0.1:{postgres.rsplit(':', 1)[1]}/optuna" in done.stdout
    finally:
        _clean(uri, name, [*hashes, f"sweep-{study_name}", f"sweep-parent-{study_name}"])
