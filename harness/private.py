"""Directories whose files are read back with pickle: only this user may write them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .config import ConfigError


def private_dir(path: str | Path, reads: str = "torch-fidelity unpickles its caches (set HARNESS_CACHE_DIR)") -> Path:
    """``path`` as a directory that only this user can write: created with mode 0700, or refused.

    Some files are read back with pickle: torch-fidelity's feature caches (``weights_only=False``) and
    submitit's job files. Whoever can write a file into such a directory, or swap the directory, could
    run code in the harness. A directory of ours that others may write is fixed to 0700; one owned by
    another user, or below a directory that others may write (without the sticky bit of /tmp), is
    refused. ``reads`` says what unpickles the files, for the error line.
    """
    path = Path(path).expanduser()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:  # a file where the directory or one of its parents should be, no permission
        in_way = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        why = f"{in_way} is a file, not a directory" if in_way else err.strerror or str(err)
        raise ConfigError(f"{path}: cannot be used as a directory: {why}") from None
    path = path.resolve()  # the checks apply to the directory actually used, not to a symlink
    uid, st = os.getuid(), path.stat()
    if st.st_uid != uid:
        raise ConfigError(
            f"{path}: directory belongs to uid {st.st_uid}, not to this user (uid {uid}); {reads}, so it is not used"
        )
    if st.st_mode & 0o077:
        path.chmod(0o700)
    for parent in path.parents:
        pst = parent.stat()
        shared = pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX
        if pst.st_uid not in (uid, 0) or shared:
            raise ConfigError(
                f"{path}: directory lies below {parent}, which another user can write or "
                f"rename entries in; {reads}, so it is not used"
            )
    return path


SUBMITIT_READS = "submitit unpickles the job files in it (use a store in a directory of your own)"
