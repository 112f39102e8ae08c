"""Which code produced a result: hashes of the sources that determine its numbers, and the git commit.

A finished result is reused unless the code that made its numbers changed. The git commit cannot tell
(an installed copy has no git; a dirty tree is one commit with many codes), and a hash of every file
throws hours of training away for a reworded report sentence. So each kind of result is keyed by the
sources that can change it, below ``harness/``:

- a trained model (``TRAINING``): the diffusion process, the networks, the training loop and its data,
  the run config's schema, and the device's precision rules;
- an evaluation (``EVALUATION``): those, and ``evaluation/`` (samplers' callers, metrics, classifiers);
- less ``NOT_NUMBERS``: code inside those folders whose output the config already records.

Analysis, reports, the CLI, orchestration, sweeps, the bench, docs and tests decide what runs and how it
is shown, never what a number is: editing them reuses every result. Tests check all three cases.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import CODE_VERSION

HARNESS = Path(__file__).resolve().parents[1]  # the installed harness package
REPO = HARNESS.parent
# Paths below harness/: a folder counts with every .py file in it.
TRAINING = ("diffusion", "models", "training", "config/run.py", "config/setting.py", "config/fields.py", "device.py")
EVALUATION = (*TRAINING, "evaluation")
# Inside those folders, but never a number: autotune decides precision and layout, and the config records its
# choice before it is hashed, so a change to how it measures changes no trained model (the hash has it).
NOT_NUMBERS = ("training/autotune.py",)
REUSE_POLICIES = ("same-code", "any")  # harness run --reuse


def source_hash(root: Path, parts: tuple[str, ...]) -> str:
    """12 hex digits over the ``.py`` files of ``parts`` below ``root``, named by their relative path."""
    h = hashlib.sha256()
    files = set()
    for part in parts:
        path = root / part
        files |= {path} if path.suffix == ".py" else set(path.rglob("*.py"))
    files -= {root / part for part in NOT_NUMBERS}
    for path in sorted(f for f in files if "__pycache__" not in f.parts):
        h.update(f"{path.relative_to(root).as_posix()}\0".encode())
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class CodeVersion:
    """The code of a training run (``train``) and of an evaluation (``eval``), as the tags that carry them."""

    train: str
    eval: str

    def of(self, role: str) -> str:
        """The version a run of ``role`` carries: an evaluation's (or a launch's) covers its model's code too."""
        return self.train if role == "train" else self.eval


def code_version_of(root: Path) -> CodeVersion:
    return CodeVersion(source_hash(root, TRAINING), source_hash(root, EVALUATION))


@functools.cache
def code_version() -> CodeVersion:
    """The code of the installed harness (computed once per process)."""
    return code_version_of(HARNESS)


def stale_reason(tags: dict[str, str], current: CodeVersion, role: str) -> str | None:
    """Why a run made by other code must not be reused (None: the code that determines it is the same)."""
    theirs, mine = tags.get(CODE_VERSION), current.of(role)
    if theirs == mine:
        return None
    what = "evaluation" if role == "eval" else "training"
    return f"made by {what} code {theirs or 'of unknown version'}, now {mine}"


def git_state() -> tuple[str, bool]:
    """(commit, dirty) of the repository, or ("unknown", False) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
        return commit or "unknown", dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
