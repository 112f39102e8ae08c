"""Files made once per machine and then reused: the domain classifier and the recognizer, the noise-aware
classifier, the reference features of FID (and the autoencoder of latent diffusion, which shares the checks).

Workers that start together all find the cache empty. ``made_once`` holds a file lock beside the file, so one
of them makes it while the others wait and then load it. The one that makes it first says what it makes,
why, where it will be cached and about how long it will take, measured on this machine before it starts,
so a first run never sits silent for minutes.

A cache is only a cache: an entry that cannot be read (truncated, a pickle of anything but tensors and plain
data, the wrong shape, NaN) is made again after one warning line, never a crash and never executed, since
every loader reads with ``torch.load(weights_only=True)`` (docs/deserialization.md).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from .config import ConfigError
from .progress import duration, say

T = TypeVar("T")


def made_once(
    path: str | Path,
    load: Callable[[Path], T],
    make: Callable[[], T],
    *,
    what: str,
    why: str,
    estimate: Callable[[], float] | None = None,
    progress: bool | None = None,
) -> T:
    """``load(path)``, or else ``make()`` (which writes ``path``) under ``path``'s lock, announced first.

    ``estimate`` gives the seconds ``make`` should take; it is called only when ``make`` is, and its timing
    is part of the announcement. ``progress`` False says nothing (as in ``harness.progress.Progress``).
    """
    path = cache_folder(Path(path).expanduser().parent) / Path(path).name
    with FileLock(f"{path}.lock", thread_local=False):
        if path.is_file():
            try:
                return load(path)
            except Exception as e:  # a cache is only a cache: an unreadable one is made again
                unreadable(what, path, e)
        if progress is not False:
            seconds = estimate() if estimate else math.nan
            how_long = f"; about {duration(seconds)} on this machine" if math.isfinite(seconds) else ""
            say(f"{what}: {why}; made once, then cached in {path.parent}{how_long}")
        return make()


def unreadable(what: str, path: Path, err: BaseException) -> None:
    """The one warning line of a cache entry that is made again (``save_atomic`` keeps the bad file as .prev)."""
    text = " ".join(str(err).split()) or type(err).__name__
    # torch's weights_only refusal goes on for a paragraph; its first sentence names what was refused.
    reason = text.split(". ")[0][:200]
    print(f"warning: making the {what} again: cannot read {path} ({reason})", file=sys.stderr, flush=True)


def cache_folder(path: str | Path, mode: int = 0o777) -> Path:
    """``path`` made a folder (with its parents; its own ``mode``), or one line naming the part that is a file."""
    path = Path(path).expanduser()
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ConfigError(f"{blocker}: is a file, so the cache folder {path} cannot be made") from None
        raise ConfigError(f"{path}: cannot make the cache folder ({e.strerror or e})") from None
    return path


def load_entry(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, so no file can run code here.

    torch's own warnings about a file's format (an unusual pickle protocol, sparse tensors) are silenced: a file
    that does not read is made again after ``unreadable``'s one line, which is all a user needs to hear."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True)


def check_tensors(tensors: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first entry that is not a dense tensor of finite values.

    A cache file that unpickles cleanly can still hold NaN (a diverged training, an edited file); loaded, it
    would surface much later as a loss or a metric that names no file. Checked here, it is made again."""
    import torch

    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.is_quantized:
            raise ValueError(f"{name} is not a dense tensor")
        if (t.is_floating_point() or t.is_complex()) and not torch.isfinite(t).all():
            raise ValueError(f"{name} holds NaN or infinite values")


def step_seconds(net, loss: Callable, steps: int, reps: int = 2) -> float:
    """Seconds for ``steps`` optimizer steps of a network, from timing ``reps`` steps of ``loss(net)``.

    ``net`` is a throwaway of the shape about to be trained (the timing moves its weights and batch
    statistics); the fastest repetition after a warm-up one stands for a step.
    """
    import torch

    optimizer = torch.optim.AdamW(net.parameters())
    cuda = next(net.parameters()).device.type == "cuda"
    best = math.inf
    with torch.enable_grad():
        for i in range(reps + 1):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss(net.train()).backward()
            optimizer.step()
            if cuda:
                torch.cuda.synchronize()
            if i:  # the first step pays for allocation and kernel selection
                best = min(best, time.perf_counter() - start)
    return best * steps
