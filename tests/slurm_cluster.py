"""A real one-node Slurm cluster on localhost, in a temporary directory, for tests/test_slurm_real.py.

Debian's packages (``slurmctld slurmd slurmdbd munge mariadb-server``; `.ci/run` installs them): munged with a key
of its own, a throwaway MariaDB behind slurmdbd, slurmctld and one slurmd. Accounting is not optional: submitit
learns that a job ended without a result (cancelled, failed on the node) only from ``sacct``, and without it a
launch would wait forever for the job that `scancel` ended. Everything listens on free loopback ports and uses
sockets, state and logs under its own directory, so nothing of the machine's own configuration is read or
changed; the programs run as root where the tests do (CI, containers), which is why every ``*User`` is the
current user.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fixtures import free_port

PROGRAMS = ("munged", "slurmctld", "slurmd", "slurmdbd", "mariadbd", "mariadb-install-db", "sbatch", "sacct")
PARTITION, NODE = "debug", "harness-node"


def missing() -> str | None:
    """Why a cluster cannot start here (the programs absent), or None."""
    absent = [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if absent:
        return (
            f"Slurm is not installed ({', '.join(absent)} missing): "
            "apt-get install slurmctld slurmd slurmdbd munge mariadb-server"
        )
    return None


@dataclass
class Cluster:
    home: Path
    env: dict[str, str]  # SLURM_CONF and PATH for every client command (sbatch, sacct, scontrol, submitit)

    def run(self, *cmd: str, check: bool = True) -> str:
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-n", NODE, "-o", "%T").strip()

    def jobs(self) -> list[dict[str, str]]:
        """Every job in the queue: id (``<array>_<task>``), state, reason."""
        out = self.run("squeue", "-h", "-r", "-o", "%i|%T|%r")
        return [dict(zip(("id", "state", "reason"), line.split("|"))) for line in out.splitlines() if line]

    def accounted(self, job_id: str) -> list[str]:
        """The states sacct recorded for ``job_id`` (its allocations only, not its steps), oldest first:
        a requeued job shows its earlier runs too (``--duplicates``)."""
        out = self.run("sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job_id)
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.home.glob("*.log")))


def _wait(what: str, ready, timeout_s: float, logs) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not come up in {timeout_s:.0f} s\n{logs()}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _config(home: Path, ports: dict[str, int], user: str) -> tuple[str, str]:
    """slurm.conf and slurmdbd.conf. ``KillWait=2``: a requeued or cancelled job gets SIGKILL two seconds after
    SIGTERM (submitit ignores SIGTERM); ``MinJobAge``: finished jobs leave the queue soon; the node claims the
    machine's CPUs and 1 GB, whatever this host has (``config_overrides``)."""
    host = socket.gethostname().split(".")[0]  # slurmctld checks that it runs on SlurmctldHost
    auth = f"socket={home}/munge.socket"
    slurm = f"""\
ClusterName=harness
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports["ctld"]}
SlurmdPort={ports["slurmd"]}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo={auth}
StateSaveLocation={home}/state
SlurmdSpoolDir={home}/spool-%n
SlurmctldPidFile={home}/slurmctld.pid
SlurmdPidFile={home}/slurmd.pid
SlurmctldLogFile={home}/slurmctld.log
SlurmdLogFile={home}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
KillWait=2
MinJobAge=10
SlurmctldTimeout=30
SlurmdTimeout=30
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports["dbd"]}
AccountingStoragePass={home}/munge.socket
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 2} RealMemory=1000 State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
    dbd = f"""\
AuthType=auth/munge
AuthInfo={auth}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports["dbd"]}
SlurmUser={user}
LogFile={home}/slurmdbd.log
PidFile={home}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["db"]}
StorageUser={user}
StorageLoc=slurm_acct
"""
    return slurm, dbd


@contextlib.contextmanager
def slurm_cluster(timeout_s: float = 120) -> Iterator[Cluster]:
    """Start the cluster, yield it once its node is idle, and stop every daemon (and the jobs) at the end."""
    # In /tmp, not pytest's tmp_path: unix socket paths must stay under 108 bytes.
    home = Path(tempfile.mkdtemp(prefix="harness-slurm-"))
    home.chmod(0o711)  # munge's socket must be reachable by every user a job might run as
    ports = {k: free_port() for k in ("ctld", "slurmd", "dbd", "db")}
    user = getpass.getuser()
    sbin = "/usr/sbin:/usr/bin"
    env = {**os.environ, "SLURM_CONF": str(home / "slurm.conf"), "PATH": f"{os.environ.get('PATH', '')}:{sbin}"}
    cluster = Cluster(home, env)
    slurm, dbd = _config(home, ports, user)
    (home / "slurm.conf").write_text(slurm)
    (home / "slurmdbd.conf").write_text(dbd)
    (home / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a configuration others can read
    (home / "state").mkdir()
    procs: list[subprocess.Popen] = []

    def daemon(*cmd: str, log: str) -> None:
        with open(home / log, "a") as out:
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    def quiet(*cmd: str) -> None:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    try:
        key = home / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        daemon(
            "munged", "--foreground", "--force", f"--key-file={key}", f"--socket={home}/munge.socket",
            f"--pid-file={home}/munged.pid", f"--log-file={home}/munged.log", f"--seed-file={home}/munge.seed",
            log="munged.out.log",
        )  # fmt: skip
        _wait("munged", lambda: (home / "munge.socket").exists(), 30, cluster.logs)

        # MariaDB without grant tables: anyone on loopback may use it, for the minutes the test runs.
        quiet("mariadb-install-db", "--no-defaults", f"--datadir={home}/db", f"--user={user}", "--skip-test-db")
        daemon(
            "mariadbd", "--no-defaults", f"--datadir={home}/db", f"--user={user}", "--bind-address=127.0.0.1",
            f"--port={ports['db']}", f"--socket={home}/db.socket", "--skip-grant-tables", f"--pid-file={home}/db.pid",
            "--innodb-flush-log-at-trx-commit=0", "--skip-log-bin",
            log="mariadb.log",
        )  # fmt: skip
        _wait("mariadbd", lambda: _listening(ports["db"]), 60, cluster.logs)

        daemon("slurmdbd", "-D", log="slurmdbd.out.log")  # reads slurmdbd.conf beside SLURM_CONF
        _wait("slurmdbd", lambda: _listening(ports["dbd"]), 60, cluster.logs)
        quiet("sacctmgr", "-i", "add", "cluster", "harness")

        daemon("slurmctld", "-D", "-i", "-f", str(home / "slurm.conf"), log="slurmctld.out.log")
        _wait("slurmctld", lambda: _listening(ports["ctld"]), 60, cluster.logs)
        daemon("slurmd", "-D", "-N", NODE, "-f", str(home / "slurm.conf"), log="slurmd.out.log")
        _wait("the node", lambda: cluster.node_state() == "idle", timeout_s, cluster.logs)
        yield cluster
    finally:
        if procs and procs[-1].args[0] == "slurmd" and procs[-1].poll() is None:
            # A job of a failed test must not train on: the node ends them before it stops.
            subprocess.run(["scancel", "--full", f"--user={user}"], env=env, capture_output=True, timeout=60)
            with contextlib.suppress(Exception):
                _wait("the queue to empty", lambda: not cluster.jobs(), 30, cluster.logs)
        for p in reversed(procs):  # slurmd first: it ends the jobs' processes with it
            if p.poll() is None:
                os.killpg(p.pid, 15)
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
        shutil.rmtree(home, ignore_errors=True)
