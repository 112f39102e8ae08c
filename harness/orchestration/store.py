"""The harness's local store and what it shares through the tracking server.

Local: beside a SQLite store (or under ``$HARNESS_STORE_ROOT`` for a server) live checkpoints, caches and
file locks; a lock per config hash makes two launches train each configuration once, and the runner and
sweeps take the same locks. Shared: the final EMA weights of each training run and the domain
classifiers behind FID are logged to the server, so the local directories are only caches.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

from ..config import Config
from ..config.schema import (
    DATA_FINGERPRINT,
    FEATURE_FINGERPRINT,
    FEATURES_KEY,
    RECOGNIZER_FINGERPRINT,
    ROLE,
)
from ..writes import writing
from .tracking import MlflowStore
from .uris import sqlite_path

EMA_FILE = "ema.pt"  # final EMA weights, in the run directory and in the training run's artifacts
EMA_ARTIFACT = f"weights/{EMA_FILE}"
# Classifiers live in one experiment of their own, one run per data set (and classifier version), rather
# than in a spec's experiment or parent run: every spec and sweep on the same data then measures FID in
# the same feature space, and a machine finds it by a tag search without knowing who trained it first.
FEATURES_EXPERIMENT = "harness-features"


def store_root(uri: str) -> Path:
    """Local directory for checkpoints, caches and locks: beside a SQLite store; for a tracking server,
    ``$HARNESS_STORE_ROOT`` or ``mlruns/`` of this clone. With a server it is only a cache of what the
    server holds (final EMA weights, sample grids): a fresh root downloads what it lacks."""
    db = sqlite_path(uri)  # absolute: a relative one is resolved as the store resolves it
    if db is not None:
        return db.parent
    return Path(os.environ.get("HARNESS_STORE_ROOT") or Path(__file__).resolve().parents[2] / "mlruns")


def lock_path(root: Path, name: str) -> Path:
    return root / "locks" / f"{name}.lock"


def _file_lock(root: Path, name: str) -> FileLock:
    path = lock_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # thread_local=False: a lock taken in one thread may be released in another (an Optuna callback).
    return FileLock(path, thread_local=False)


def job_lock(root: Path, config_hash: str) -> FileLock:
    """Exclusive, blocking lock on one config hash (``with job_lock(...)``); the OS releases it if the holder dies."""
    return _file_lock(root, config_hash)


def hold_lock(root: Path, name: str) -> FileLock:
    """An exclusive lock, acquired (blocking), held until ``.release()`` or the process dies."""
    lock = _file_lock(root, name)
    lock.acquire()
    return lock


def lock_held(path: Path) -> bool:
    """Whether a live process holds the lock at ``path``: one non-blocking attempt to take it (the OS drops
    the locks of a process that died, so a dead holder's lock is free)."""
    if not path.exists():
        return False
    probe = FileLock(path, blocking=False, thread_local=False)
    try:
        probe.acquire()
    except Timeout:
        return True
    probe.release()
    return False


def load_ema(config: Config, data, run_dir: Path, device, fetch=None):
    """The final EMA model of ``config``: from the local checkpoint, else from ``run_dir/ema.pt``, which
    ``fetch(path)`` (if given) downloads from the training run's artifacts when it is not there yet."""
    from ..training import checkpoint
    from ..training.train import build_model

    state = checkpoint.load(run_dir / "checkpoint.pt", map_location=device)
    if state is not None and state["step"] == config.train.steps:
        weights = state["ema"]["model"]
    else:  # gone (another machine trained it), or only an earlier one is readable
        weights = _logged_ema(config, run_dir, device, fetch)
    model = build_model(config, data.channels, data.image_size, data.num_classes).to(device)
    model.load_state_dict(weights)
    return model.eval()


def publish_ema(store: MlflowStore, run_id: str, config: Config, run_dir: Path) -> None:
    """Log the final EMA weights of a finished training to its run, as a state dict: read back with
    ``weights_only=True`` (``load_ema``), so a teammate's download cannot run code."""
    import torch

    from ..training import checkpoint

    state = checkpoint.load(run_dir / "checkpoint.pt")
    if state is None or state["step"] != config.train.steps:
        raise checkpoint.CheckpointError(f"no final checkpoint in {run_dir} to log the EMA weights from")
    path, part = run_dir / EMA_FILE, run_dir / f".{EMA_FILE}.part"  # complete or absent, as downloads are
    with writing(part):
        torch.save({"config_hash": config.train_hash(), "step": state["step"], "model": state["ema"]["model"]}, part)
    os.replace(part, path)
    store.log_file(run_id, path, EMA_ARTIFACT.rpartition("/")[0])


def _logged_ema(config: Config, run_dir: Path, device, fetch) -> dict:
    import torch

    from ..training.checkpoint import CheckpointError

    path = run_dir / EMA_FILE
    if not path.is_file() and not (fetch is not None and fetch(path)):
        raise CheckpointError(
            f"checkpoint missing: retrain with --force (no final checkpoint in {run_dir}, no logged EMA weights)"
        )
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        ok = saved["config_hash"] == config.train_hash() and saved["step"] == config.train.steps
    except Exception as err:  # noqa: BLE001 - truncated, not a state dict, unpicklable objects refused
        raise CheckpointError(f"{path}: not readable as EMA weights ({str(err).splitlines()[0][:160]})") from None
    if not ok:
        raise CheckpointError(f"{path}: EMA weights of another configuration or step; delete it to download again")
    return saved["model"]


def shared_classifiers(store: MlflowStore, data, cache_dir: Path) -> None:
    """Make this machine's cached domain classifier and recognizer for ``data`` those the store holds.

    The features run for the data (experiment ``harness-features``) is the authority: a missing or
    different local file is replaced by its download, checked against the run's fingerprint tags, so
    every machine on one server computes FID in one feature space. With no such run yet, the local
    classifiers (trained here if need be) are logged as it; when two machines do that at once, the
    older run wins and the other machine adopts it. Reference statistics are not shared: torch-fidelity
    keeps them as pickles, never to be read from a server, and they follow from the data and the
    classifier, so each machine recomputes them (seconds) in the same feature space.
    """
    from filelock import FileLock

    from ..config import ConfigError
    from ..evaluation.features import cache_path, domain_classifier

    folder = Path(cache_dir) / "classifiers"
    paths = {  # by the tag that holds the fingerprint of each
        tag: cache_path(data, folder, reject=tag == RECOGNIZER_FINGERPRINT)
        for tag in (FEATURE_FINGERPRINT, RECOGNIZER_FINGERPRINT)
    }
    key = "+".join(p.stem for p in paths.values())
    exp = store.experiment_id(FEATURES_EXPERIMENT)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / f".{data.fingerprint}.lock"):  # one process per machine trains or downloads
        for _ in range(2):  # publish, then adopt whichever run is the oldest
            found = store.runs(exp, {ROLE: "features", FEATURES_KEY: key})
            finished = [r for r in found if r.info.status == "FINISHED"]
            if finished:
                record = finished[-1]  # newest first: the oldest is the one everybody adopts
                for tag, path in paths.items():
                    want = record.data.tags.get(tag)
                    if _file_fingerprint(path) == want:
                        continue
                    part = path.with_name(f".{path.name}.download")
                    got = store.download(record.info.run_id, f"classifiers/{path.name}", part)
                    if got is None or _file_fingerprint(part) != want:
                        part.unlink(missing_ok=True)
                        raise ConfigError(
                            f"features run {record.info.run_id} in {store.uri}: classifiers/{path.name} "
                            f"is missing or does not match its {tag} {want}; not used"
                        )
                    os.replace(part, path)
                return
            tags = {ROLE: "features", DATA_FINGERPRINT: data.fingerprint, FEATURES_KEY: key}
            for tag in paths:  # trained here if this machine has never trained them
                tags[tag] = domain_classifier(data, folder, reject=tag == RECOGNIZER_FINGERPRINT).fingerprint
            run = store.start_run(exp, f"features-{data.name}-{data.fingerprint}", tags=tags)
            for path in paths.values():
                store.log_file(run.run_id, path, "classifiers")
            run.finish("FINISHED")
        raise ConfigError(f"features run for {key} in {store.uri}: logged but not found again")


def _file_fingerprint(path: Path) -> str | None:
    """The weights fingerprint of a classifier file, or None if there is no readable one."""
    from ..evaluation.features import read_classifier

    try:
        return read_classifier(path).fingerprint
    except Exception:  # noqa: BLE001 - missing, truncated or not a classifier: all mean "fetch it"
        return None
