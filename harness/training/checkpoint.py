"""Atomic checkpoints, the last two kept, and which configuration they belong to.

A crash mid-write, or a newest file that cannot be read, leaves the previous checkpoint to resume from. A
checkpoint stores the hash of the configuration that wrote it (``Config.train_hash``), and a run resumes only
its own (``resume_state``): another configuration's, or a file that is not a checkpoint of ours, is refused in
one line (``ForeignCheckpoint``) or, when the caller forces a retrain, moved aside. A run dir whose only
checkpoint is unreadable (a kill during the first save, a truncated file) is moved aside with one warning and
the run starts again at step 0: the file holds nothing the run can use, and nothing in it is ever executed
(``weights_only=True``). Nothing here deletes a checkpoint silently: files are renamed into
``<run dir>/aside/`` and the warning says where, and a retrain's removal (``remove_run_dir``) removes what the
path points to or refuses.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..writes import writing

ASIDE = "aside"  # <run dir>/aside/<UTC time>-<why>/: what a run dir held before a restart, renamed, never deleted
# What the loop reads from every checkpoint (training/train.py's ``save``).
REQUIRED = (
    "model",
    "ema",
    "optimizer",
    "lr_schedule",
    "generator",
    "torch_rng",
    "step",
    "evals",
    "last_loss",
    "seconds",
)


class CheckpointError(RuntimeError):
    """No usable checkpoint where one is needed; the message is one line for the user."""


class ForeignCheckpoint(CheckpointError):
    """A readable checkpoint that this configuration must not resume: another config hash, another architecture,
    or not a checkpoint of this harness. A forced retrain moves it aside instead."""


def previous(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same directory and fsync; then the current file becomes the
    previous one and the new file takes its place, each by an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with writing(path), os.fdopen(fd, "wb") as f:  # a full disk: one line naming the checkpoint
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, previous(path))  # a crash between the two renames leaves the previous one
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The checkpoint at ``path``, else the previous one (with a warning line), or None if there is none.

    Only tensors and plain data are unpickled. Raises ``CheckpointError`` when files exist but none is
    readable.
    """
    path = Path(path)
    problems = []
    for candidate in (path, previous(path)):
        if not candidate.exists():
            problems.append(f"{candidate.name} is missing")
            continue
        try:
            state = torch.load(candidate, map_location=map_location, weights_only=True)
        except Exception as err:  # noqa: BLE001 - truncated, corrupt, unreadable: all mean "not this one"
            problems.append(f"{candidate.name} is unreadable ({_first_line(err)})")
            continue
        if candidate != path:
            step = state.get("step", "?") if isinstance(state, dict) else "?"
            print(f"warning: {problems[0]}; using the previous checkpoint {candidate} (step {step})", file=sys.stderr)
        return state
    if all(p.endswith("is missing") for p in problems):
        return None
    raise CheckpointError(f"no readable checkpoint in {path.parent}: {'; '.join(problems)}")


def stored_hash(state: dict[str, Any]) -> str | None:
    """The config hash a checkpoint was written for; from its stored config when it predates ``config_hash``."""
    if "config_hash" in state:
        return str(state["config_hash"])
    try:
        return Config.model_validate_json(state["config"]).train_hash()
    except Exception:  # noqa: BLE001 - a config this code cannot read is not this config
        return None


def foreign(state: Any, config_hash: str, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why ``state`` is not a checkpoint that config ``config_hash`` (whose network has the parameter
    ``shapes``) may resume, or None when it is."""
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
        return f"is not a checkpoint of this harness (no {', '.join(repr(k) for k in missing[:3])})"
    theirs = stored_hash(state)
    if theirs != config_hash:
        return f"holds config {theirs or 'of unknown hash'}, not this config {config_hash}"
    weights = state["model"] if isinstance(state["model"], dict) else {}
    got = {k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if got != shapes:
        name = next((k for k in sorted(set(got) | set(shapes)) if got.get(k) != shapes.get(k)), "?")
        return (
            f"holds a network of another architecture than config {config_hash} "
            f"({name}: {got.get(name, 'absent')} in the checkpoint, {shapes.get(name, 'absent')} in the config)"
        )
    return None


def resume_state(
    run_dir: str | Path,
    config_hash: str,
    shapes: dict[str, tuple[int, ...]],
    *,
    force: bool = False,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any] | None:
    """The checkpoint in ``run_dir`` that config ``config_hash`` resumes, or None to start at step 0.

    Unreadable files alone: moved aside, one warning, None. Another configuration's checkpoint (``foreign``):
    ``ForeignCheckpoint`` naming both hashes, or with ``force`` moved aside (one line saying where) and None.
    """
    run_dir = Path(run_dir)
    path = run_dir / "checkpoint.pt"
    try:
        state = load(path, map_location=map_location)
    except CheckpointError as err:  # files there, none readable: what a kill in the first save leaves
        where = move_aside(run_dir, "unreadable")
        print(f"warning: {err}; moved aside to {where}, training starts again at step 0", file=sys.stderr)
        return None
    if state is None:
        return None
    why = foreign(state, config_hash, shapes)
    if why is None:
        return state
    if not force:
        raise ForeignCheckpoint(f"run dir {run_dir}: {path.name} {why}; --force moves it aside and retrains")
    where = move_aside(run_dir, f"not-{config_hash}")
    print(f"warning: {path.name} {why}; moved aside to {where}, training starts at step 0", file=sys.stderr)
    return None


def move_aside(run_dir: str | Path, why: str) -> Path:
    """Rename everything in ``run_dir`` (checkpoints, grids, EMA weights: the products of a training that will
    not be resumed) into a new ``run_dir/aside/<UTC time>-<why>/``; return that folder."""
    run_dir = Path(run_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest, n = run_dir / ASIDE / f"{stamp}-{why}", 1
    while dest.exists():  # two restarts within a second keep both
        dest, n = run_dir / ASIDE / f"{stamp}-{why}-{n}", n + 1
    try:
        dest.mkdir(parents=True)
        for entry in run_dir.iterdir():
            if entry.name != ASIDE:
                os.replace(entry, dest / entry.name)
    except OSError as err:
        raise CheckpointError(f"run dir {run_dir}: cannot move its files aside to {dest} ({err})") from None
    return dest


def remove_run_dir(run_dir: str | Path) -> None:
    """Empty ``run_dir`` for a retrain from scratch, or raise ``CheckpointError``; never silently nothing.

    A directory is removed; a symbolic link to one is kept, and what it points to is emptied (the link is
    where the user wants the run's files). A link to nothing, or a path that is not a directory, is refused.
    """
    run_dir = Path(run_dir)
    try:
        if run_dir.is_symlink():
            target = run_dir.resolve()
            if not target.is_dir():
                raise CheckpointError(f"run dir {run_dir} links to {target}, which is not a directory: fix the link")
            for entry in target.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        elif run_dir.is_dir():
            shutil.rmtree(run_dir)
        elif run_dir.exists():
            raise CheckpointError(f"run dir {run_dir} is not a directory")
    except OSError as err:
        raise CheckpointError(f"run dir {run_dir}: cannot remove it for a retrain ({err})") from None
    left = [p.name for p in (run_dir / "checkpoint.pt", previous(run_dir / "checkpoint.pt")) if p.exists()]
    if left:  # a file system that reports success and keeps the file: say so rather than resume it
        raise CheckpointError(f"run dir {run_dir}: {', '.join(left)} still there after removing it for a retrain")


def _first_line(err: BaseException) -> str:
    """The first sentence of ``err``: torch's loader errors go on for a paragraph."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0][:160] if text else type(err).__name__
