"""Processes seen through /proc (Linux; psutil is not a dependency): who a process's workers are, and
whether they still live."""

import os
import signal
from pathlib import Path


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name, in parentheses, may hold spaces
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped by its new parent) counts as gone."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def spawned_workers(parent: int) -> list[int]:
    """The multiprocessing workers (spawn start method) whose parent is ``parent``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (_stat(int(entry.name)) or ("", 0))[1] == parent:
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                pids.append(int(entry.name))
    return sorted(pids)


def kill_all(pids) -> None:
    """Clean up after a test that failed: end the processes it started that still live."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
