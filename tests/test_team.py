"""Two machines, one tracking server: everything a result needs is in the server, local directories are caches.

A real ``mlflow server`` (SQLite backend, proxied artifacts in a temporary directory) on a loopback port.
Machine 1 runs a smoke ablation through it. Machine 2, with an empty local root and an empty cache,
writes the report (sample grids downloaded from the training runs) and evaluates a new sampler setting
on the finished models: it downloads their EMA weights and the domain classifiers instead of training,
so its FIDs carry machine 1's feature fingerprint.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures import TINY, mlflow_server
from PIL import Image

from analysis.grids import _logged_grids
from analysis.load import load_experiment
from analysis.report import write_report
from harness.config import Config, ConfigError
from harness.config.schema import FEATURE_FINGERPRINT, HASH, RECOGNIZER_FINGERPRINT, ROLE
from harness.evaluation.features import cache_path, domain_classifier, read_classifier
from harness.orchestration.store import EMA_ARTIFACT, EMA_FILE, FEATURES_EXPERIMENT, load_ema, shared_classifiers
from harness.orchestration.tracking import MlflowStore
from harness.training.checkpoint import CheckpointError
from harness.training.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
MLFLOW = Path(sys.executable).with_name("mlflow")
SETTING, NEW_SETTING = "ddim-3-eta0-w0", "ddim-5-eta0-w0"
SPEC = {
    "name": "team",
    "question": "Does a teammate see the same results?",
    "base": {"data": {"dataset": "mnist-5k"}},
    "axes": {"grid": {"diffusion.schedule": ["linear", "cosine"]}},
    "seeds": [0],
    "evaluate": {"sampler": ["ddim"], "steps": [3]},
    "cpu_jobs": 1,
    "profiles": {"smoke": {"set": TINY}},
}


@pytest.fixture
def server(tmp_path):
    """``mlflow server`` on a free loopback port, SQLite and proxied artifacts under tmp_path/server."""
    with mlflow_server(tmp_path / "server") as url:
        yield url


def _machine(tmp_path, name: str, cache: Path) -> dict:
    """The environment of one machine: its own local root (checkpoints, grids, locks) and cache."""
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HARNESS_STORE_ROOT": str(root),
        "HARNESS_CACHE_DIR": str(cache),
    }


def _harness(env: dict, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        env=env,
        cwd=env["HARNESS_STORE_ROOT"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def _marked_classifiers(folder: Path) -> dict[str, str]:
    """Machine 1's classifiers: the shared test cache's, each with one weight nudged.

    Training is deterministic on a CPU, so a machine that trained its own would get the unmarked
    fingerprints: finding the marked ones on machine 2 proves that it downloaded them.
    """
    data = load_dataset("mnist-5k")
    shared = Path(os.environ["HARNESS_CACHE_DIR"]) / "classifiers"
    fingerprints = {}
    for tag, reject in ((FEATURE_FINGERPRINT, False), (RECOGNIZER_FINGERPRINT, True)):
        trained = domain_classifier(data, shared, reject=reject).fingerprint  # trained once per test cache
        saved = torch.load(cache_path(data, shared, reject=reject), weights_only=True)
        saved["state_dict"]["head.bias"] = saved["state_dict"]["head.bias"] + 1e-3
        path = cache_path(data, folder, reject=reject)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(saved, path)
        fingerprints[tag] = read_classifier(path).fingerprint
        assert fingerprints[tag] != trained
    return fingerprints


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.slow
def test_second_machine_reports_and_evaluates_without_training(tmp_path, server, monkeypatch):
    spec = tmp_path / "team.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    cache1, cache2 = tmp_path / "cache1", tmp_path / "cache2"
    marked = _marked_classifiers(cache1 / "classifiers")
    one, two = _machine(tmp_path, "one", cache1), _machine(tmp_path, "two", cache2)

    out = _harness(one, "run", str(spec), "--profile", "smoke", "--tracking-uri", server)
    assert "2 trained" in out, out
    store = MlflowStore(server)
    exp = store.experiment_id("team")
    train_runs = {r.info.run_id: r for r in store.runs(exp, {ROLE: "train"})}
    assert len(train_runs) == 2
    losses = {rid: store.client.get_metric_history(rid, "train/loss") for rid in train_runs}
    for rid, run in train_runs.items():
        assert store.artifacts(rid, "weights") == [EMA_ARTIFACT]
        assert run.data.tags[FEATURE_FINGERPRINT] == marked[FEATURE_FINGERPRINT]
    features = store.runs(store.experiment_id(FEATURES_EXPERIMENT), {ROLE: "features"})
    assert len(features) == 1
    assert {t: features[0].data.tags[t] for t in marked} == marked

    # Machine 2 cannot see machine 1's disk (whose paths the runs' checkpoint tags name).
    (tmp_path / "one").rename(tmp_path / "one-away")
    # Its report (in this process, as `harness report` writes it) finds the grids in the runs' artifacts.
    monkeypatch.setenv("HARNESS_STORE_ROOT", two["HARNESS_STORE_ROOT"])
    md = write_report(store, "team", tmp_path / "report-two", spec_path=str(spec)).md.read_text()
    assert "No sample grids found" not in md and "samples" in md
    for run in train_runs.values():
        h = run.data.tags[HASH]
        local = sorted((tmp_path / "one-away" / "checkpoints" / "team" / h / "grids" / SETTING).glob("*.png"))
        fetched = sorted((tmp_path / "two" / "checkpoints" / "team" / h / "grids" / SETTING).glob("*.png"))
        assert [p.name for p in fetched] == [p.name for p in local] == ["step_0000002.png", "step_0000004.png"]
        assert all(np.array_equal(_pixels(a), _pixels(b)) for a, b in zip(local, fetched))

    # Machine 2 evaluates a new setting on the finished models: downloads, trains nothing.
    spec.write_text(yaml.safe_dump({**SPEC, "evaluate": {"sampler": ["ddim"], "steps": [3, 5]}}))
    out = _harness(two, "run", str(spec), "--profile", "smoke", "--tracking-uri", server)
    assert "0 trained, 2 evaluated" in out, out
    assert set(train_runs) == {r.info.run_id for r in store.runs(exp, {ROLE: "train"})}
    for rid in train_runs:  # not one training step more
        assert store.client.get_metric_history(rid, "train/loss") == losses[rid]
    assert len(store.runs(store.experiment_id(FEATURES_EXPERIMENT), {ROLE: "features"})) == 1
    evals = [r for r in store.runs(exp, {ROLE: "eval"}) if r.data.params["steps"] == "5"]
    assert len(evals) == 2 and all(r.info.status == "FINISHED" for r in evals)
    for r in evals:  # the same feature space as machine 1's evaluations
        assert {t: r.data.tags[t] for t in marked} == marked
    for run in train_runs.values():
        run_dir = tmp_path / "two" / "checkpoints" / "team" / run.data.tags[HASH]
        assert not (run_dir / "checkpoint.pt").exists() and (run_dir / EMA_FILE).is_file()
    for tag, reject in ((FEATURE_FINGERPRINT, False), (RECOGNIZER_FINGERPRINT, True)):
        path = cache_path(load_dataset("mnist-5k"), cache2 / "classifiers", reject=reject)
        assert read_classifier(path).fingerprint == marked[tag]

    # Back on machine 1, the report shows machine 2's new grid (downloaded; machine 1 never sampled it).
    (tmp_path / "one-away").rename(tmp_path / "one")
    monkeypatch.setenv("HARNESS_STORE_ROOT", one["HARNESS_STORE_ROOT"])
    data = load_experiment(store, "team")
    assert set(data.grids[data.grids["step"] == 4]["setting"]) == {SETTING, NEW_SETTING}
    assert set(data.evals["setting"]) == {SETTING, NEW_SETTING}
    assert set(data.evals["feature_fingerprint"]) == {marked[FEATURE_FINGERPRINT]}
    for run in train_runs.values():
        grid = tmp_path / "one" / "checkpoints" / "team" / run.data.tags[HASH] / "grids" / NEW_SETTING
        assert [p.name for p in grid.glob("*.png")] == ["step_0000004.png"]


# -- the same guarantees in one process, on a SQLite store (fast) -------------------------------------------


class _Payload:
    """Unpickling this runs a command: what ``weights_only=True`` must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_logged_ema_weights_of_another_config_or_with_code_are_refused(tmp_path):
    config = Config()
    with pytest.raises(CheckpointError, match="checkpoint missing"):  # nothing local, nothing logged
        load_ema(config, None, tmp_path, "cpu", fetch=lambda dest: False)
    torch.save({"config_hash": "0" * 12, "step": config.train.steps, "model": {}}, tmp_path / EMA_FILE)
    with pytest.raises(CheckpointError, match="another configuration"):
        load_ema(config, None, tmp_path, "cpu")
    marker = tmp_path / "ran"
    torch.save(
        {"config_hash": config.train_hash(), "step": config.train.steps, "model": _Payload(marker)}, tmp_path / EMA_FILE
    )
    with pytest.raises(CheckpointError, match="not readable as EMA weights"):
        load_ema(config, None, tmp_path, "cpu")
    assert not marker.exists()


def test_the_store_decides_the_feature_space_and_a_tampered_classifier_is_refused(tmp_path):
    store = MlflowStore(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    data = load_dataset("mnist-5k")
    marked = _marked_classifiers(tmp_path / "a" / "classifiers")
    shared_classifiers(store, data, tmp_path / "a")  # the first machine publishes its (marked) classifiers
    shared_classifiers(store, data, tmp_path / "a")  # once: a second call finds them
    (run,) = store.runs(store.experiment_id(FEATURES_EXPERIMENT), {ROLE: "features"})
    assert {t: run.data.tags[t] for t in marked} == marked

    # A machine whose cache holds other classifiers for the same data (its own training) takes the store's.
    shutil.copytree(Path(os.environ["HARNESS_CACHE_DIR"]) / "classifiers", tmp_path / "b" / "classifiers")
    shared_classifiers(store, data, tmp_path / "b")
    for tag, reject in ((FEATURE_FINGERPRINT, False), (RECOGNIZER_FINGERPRINT, True)):
        assert (
            read_classifier(cache_path(data, tmp_path / "b" / "classifiers", reject=reject)).fingerprint == marked[tag]
        )

    # A logged file that does not match its run's fingerprint is not used, and nothing is left in the cache.
    name = cache_path(data, tmp_path / "a" / "classifiers").name
    (logged,) = (tmp_path / "store" / "artifacts").rglob(name)
    shutil.copy(Path(os.environ["HARNESS_CACHE_DIR"]) / "classifiers" / name, logged)
    with pytest.raises(ConfigError, match=f"classifiers/{name} is missing or does not match"):
        shared_classifiers(store, data, tmp_path / "c")
    assert [p.name for p in (tmp_path / "c" / "classifiers").iterdir() if not p.name.endswith(".lock")] == []


def test_logged_grids_are_found_by_setting_and_step_newest_first():
    class Store:
        def artifacts(self, run_id, folder):
            stem = "images/samples~ddim-3-eta0-w0+step+{}+timestamp+{}+0b1e2f3a-1111"
            return [
                stem.format(2, 100) + ".png",
                stem.format(2, 100) + "+compressed.webp",  # MLflow's thumbnail
                stem.format(4, 100) + ".png",
                stem.format(4, 200) + ".png",  # logged again (a resumed evaluation): the newest wins
                "images/samples#ddim-5-eta0-w0%step%4%timestamp%100%0b1e2f3a.png",  # MLflow 2's names
                "images/other~x+step+1+timestamp+1+ab.png",
            ]

    grids = _logged_grids(Store(), "run")
    assert grids == {
        "ddim-3-eta0-w0": {2: Store().artifacts(0, 0)[0], 4: Store().artifacts(0, 0)[3]},
        "ddim-5-eta0-w0": {4: Store().artifacts(0, 0)[4]},
    }
