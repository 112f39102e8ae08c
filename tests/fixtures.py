"""What tests share: the tiny configuration (the shipped smoke profile's), a smoke spec on disk, a shipped spec to
copy, and an ``mlflow server`` on a loopback port."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness.config.spec import with_shared_profiles

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# The tiny model every smoke run trains (experiments/profiles/smoke.yaml: 4 steps, evaluated at steps 2 and 4 on
# 16 samples), on the CPU: the dotted overrides of a spec's profile, and the model section of a config.
TINY = {**yaml.safe_load((EXPERIMENTS / "profiles" / "smoke.yaml").read_text())["set"], "train.device": "cpu"}
TINY_MODEL = {k.removeprefix("model."): v for k, v in TINY.items() if k.startswith("model.")}


def write_spec(tmp_path: Path, name: str = "tiny", smoke: dict | None = None, **fields) -> Path:
    """``tmp_path/<name>.yaml``: two arms (linear and cosine schedules) x seed 0 on mnist-5k, evaluated with DDIM-3,
    whose smoke profile trains the tiny model (``smoke``: more of its overrides); ``fields`` replace the spec's."""
    spec = {
        "name": name,
        "question": "Does it run?",
        "base": {"data": {"dataset": "mnist-5k"}},
        "axes": {"grid": {"diffusion.schedule": ["linear", "cosine"]}},
        "seeds": [0],
        "evaluate": {"sampler": ["ddim"], "steps": [3]},
        "profiles": {"smoke": {"set": {**TINY, **(smoke or {})}}},
        **fields,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def shipped_spec(file: str) -> dict:
    """A shipped spec's data with the shared profiles it gets (``experiments/profiles/``): what to copy elsewhere."""
    return with_shared_profiles(yaml.safe_load((EXPERIMENTS / file).read_text()), EXPERIMENTS / file)[0]


# -- a tracking server ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(port: int, backend_uri: str, *args: str, log: Path, timeout_s: float = 180):
    """``mlflow server`` on 127.0.0.1:port (one worker, ``args`` for its artifacts), in a process group of its own
    (it starts helpers, and one signal must end them all); returns once /health answers, else fails the test
    with the end of ``log``."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, *args]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            pytest.fail(f"mlflow server did not come up (exit {proc.poll()}): {Path(log).read_text()[-2000:]}")
        time.sleep(0.25)


def stop_server(proc) -> None:
    """End the server and every helper it started (its process group); a no-op when it has stopped already."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@contextlib.contextmanager
def mlflow_server(folder: Path, backend_uri: str | None = None, *args: str):
    """A server for the length of a ``with`` (its URL): by default a SQLite store and proxied artifacts in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    backend_uri = backend_uri or f"sqlite:///{folder / 'server.db'}"
    args = args or ("--artifacts-destination", str(folder / "artifacts"))
    port = free_port()
    proc = start_mlflow_server(port, backend_uri, *args, log=folder / "server.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)
