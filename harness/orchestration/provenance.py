"""Which code produced a result: a hash of the harness and analysis sources, and the git commit.

A finished run is only reused by code that would produce the same numbers. The git commit alone
cannot tell: an installed copy has no git, and a dirty tree is the same commit with different code.
So the sources themselves are hashed (every ``.py`` file of the two packages, by relative path and
bytes); the README, specs and caches are not sources, so editing them changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

from ..config.schema import CODE_VERSION

PACKAGES = ("harness", "analysis")
REPO = Path(__file__).resolve().parents[2]
REUSE_POLICIES = ("same-code", "any")  # harness run --reuse


def source_hash(roots: dict[str, Path]) -> str:
    """12 hex digits over the ``.py`` files under each root, named by package and relative path."""
    h = hashlib.sha256()
    for name, root in sorted(roots.items()):
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            h.update(f"{name}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
            h.update(b"\0")
    return h.hexdigest()[:12]


@functools.cache
def code_version() -> str:
    """The hash of the installed ``harness`` and ``analysis`` packages (computed once per process)."""
    import importlib.util

    roots = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots[name] = Path(next(iter(spec.submodule_search_locations)))
    return source_hash(roots)


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


def stale_reason(tags: dict[str, str], current: str) -> str | None:
    """Why a run made by other code must not be reused (None: same code)."""
    theirs = tags.get(CODE_VERSION)
    if theirs == current:
        return None
    return f"made by code {theirs or 'of unknown version'}, now {current}"
