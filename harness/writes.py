"""Writing files: a full disk is one line that says so and names the file being written.

``torch.save`` reports ENOSPC as ``enforce fail at inline_container.cc ... file write failed``, and MLflow's
SQLite as ``database or disk is full``; neither names the file or the disk. ``writing(path)`` turns every
such error raised while ``path`` is written into ``DiskFull``, an ``OSError`` with errno ENOSPC.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What full-disk errors say when they carry no errno: torch's zip writer, SQLite.
FULL_TEXTS = ("file write failed", "unexpected pos", "database or disk is full", "No space left on device")


class DiskFull(OSError):
    """No space left while writing a named file; ``str()`` is the one line."""

    def __init__(self, path: Path):
        super().__init__(errno.ENOSPC, f"disk full: no space left on device while writing {path}{_free(path)}")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def _free(path: Path) -> str:
    try:
        usage = shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists()))
    except (OSError, StopIteration):
        return ""
    return f" ({usage.free / 2**20:.0f} MiB free of {usage.total / 2**30:.1f} GiB there)"


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) means no space was left: ENOSPC or EDQUOT, or the texts above."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(seen) for t in FULL_TEXTS):  # torch's RuntimeError, SQLAlchemy's OperationalError
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Run the block that writes ``path``; a full disk inside it becomes ``DiskFull(path)``."""
    try:
        yield
    except DiskFull:
        raise
    except (OSError, RuntimeError) as err:
        if is_disk_full(err):
            raise DiskFull(Path(path)) from None
        raise
