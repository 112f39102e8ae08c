"""Atomic checkpoints, the last two kept: a crash mid-write, or a newest file that cannot be read, leaves
the previous checkpoint to resume from."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..writes import writing


class CheckpointError(RuntimeError):
    """No usable checkpoint where one is needed; the message is one line for the user."""


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
            print(
                f"warning: {problems[0]}; using the previous checkpoint {candidate} (step {state.get('step', '?')})",
                file=sys.stderr,
                flush=True,
            )
        return state
    if all(p.endswith("is missing") for p in problems):
        return None
    raise CheckpointError(f"no readable checkpoint in {path.parent}: {'; '.join(problems)}")


def _first_line(err: BaseException) -> str:
    """The first sentence of ``err``: torch's loader errors go on for a paragraph."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0][:160] if text else type(err).__name__
