"""The ``HARNESS_*`` environment variables, each declared once with what it means and what it may hold.

A mistyped name would be ignored and a wrong value (``HARNESS_AUTOTUNE=of``, a cache
root that is a file) would surface as a traceback deep in a job: ``check_environment`` refuses both in
one line naming the variable before anything runs. The tests read the tree for every ``HARNESS_`` name, so
a variable read anywhere without a row here fails the build.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from .uris import check_directory

PREFIX = "HARNESS_"


@dataclass(frozen=True)
class Variable:
    name: str
    meaning: str
    problem: Callable[[str], str | None] = lambda _: None  # why a value is wrong, None when it is fine


def _directory(value: str) -> str | None:
    try:
        check_directory(Path(value).expanduser(), "directory", write=True)
    except ConfigError as err:
        return str(err)
    return None


def _one_of(*allowed: str) -> Callable[[str], str | None]:
    return lambda v: None if v in ("", *allowed) else f"the only value is {' or '.join(map(repr, allowed))}"


def _device(value: str) -> str | None:
    # Set by the local executors, one per worker slot; only its form is checked here, what exists is
    # train.device's check (harness/device.py).
    return None if re.fullmatch(r"cpu|mps|cuda(:\d+)?", value) else "expected cpu, cuda, cuda:N or mps"


VARIABLES = {
    v.name: v
    for v in (
        Variable("HARNESS_CACHE_DIR", "classifiers, reference statistics, autotune choices", _directory),
        Variable("HARNESS_STORE_ROOT", "checkpoints, grids and locks beside a tracking server", _directory),
        Variable("HARNESS_AUTOTUNE", "off: auto fields resolve to fp32, contiguous, unmeasured", _one_of("off")),
        Variable("HARNESS_DEVICE", "the device a worker slot was given (set by the executors)", _device),
        Variable("HARNESS_DEBUG", "any value: a failed job also prints its traceback"),
        Variable("HARNESS_UI_SCREENSHOT", "tests/test_mlflow_ui.py: where the README's screenshot goes"),
    )
}


def check_environment(environ: Mapping[str, str] = os.environ) -> None:
    """``ConfigError`` naming the first ``HARNESS_*`` variable that is unknown or holds a wrong value."""
    for name in sorted(k for k in environ if k.startswith(PREFIX)):
        variable = VARIABLES.get(name)
        if variable is None:
            close = difflib.get_close_matches(name, VARIABLES, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"environment variable {name}: unknown; {hint}the harness reads {', '.join(VARIABLES)}")
        why = variable.problem(environ[name])
        if why:
            raise ConfigError(f"environment variable {name}={environ[name]!r}: {why}")
