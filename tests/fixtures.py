"""What tests share: the tiny configuration (the shipped smoke profile's), a smoke spec on disk, a shipped spec
to copy, and an ``mlflow server`` on a free loopback port."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
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
    return with_shared_profiles(yaml.safe_load((EXPERIMENTS / file).read_text()), EXPERIMENTS / file)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(backend: str, log: Path, *options: str, timeout: float = 180):
    """``mlflow server`` for the ``backend`` store on a free loopback port, in its own process group (its workers
    share it: one signal ends them all); yields its URL once /health answers. ``options``: more server flags."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, *options]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the MLflow server did not start (exit {proc.poll()}): {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """End ``proc`` and the helpers it started (its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # stopped already
        pass
    proc.wait()
