"""``harness score IMAGES``: score any image set against a data set, as training evaluations do.

The images are compared with the whole data set (the reference of every training evaluation), in
the domain classifier's feature space, and judged by the same recognizer, so a number printed here
can be put next to a number from a run. Files are read without unpickling anything: ``.npy`` and
``.npz`` with ``allow_pickle=False``, ``.pt`` with ``torch.load(weights_only=True)``. A PNG's size is read
from its header and checked before any pixel is decoded, so a decompression bomb is one line, not the memory.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import ConfigError, EvalConfig
from .metrics import PRC_NEIGHBORHOOD

MIN_IMAGES = 2 * PRC_NEIGHBORHOOD + 4  # 10: k-NN balls need k others; FID and KID need a spread, not one point
SUFFIXES = (".npy", ".npz", ".pt", ".pth")
KEYS = ("n", "fid", "fid_se", "fid_floor", "fid_inf", "kid", "precision", "recall", "recognizability")


def read_array(path: Path, channels: int, size: int) -> np.ndarray | Tensor:
    """The array stored at ``path``: a tensor file, or a folder of size x size PNGs stacked as (N, H, W[, 3]) uint8."""
    if path.is_dir():
        return _read_pngs(path, channels, size)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"{path}: unknown kind of file; expected a folder of PNGs or one of {', '.join(SUFFIXES)}")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if not archive.files:
                    raise ConfigError(f"{path}: the .npz archive holds no array")
                return archive[archive.files[0]]
        with warnings.catch_warnings():  # torch warns about sparse and storage types: the check below says it once
            warnings.simplefilter("ignore")
            value = torch.load(path, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as e:  # a truncated file, a pickle, not an array at all
        raise ConfigError(f"{path}: cannot read it as {suffix} ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(value, Tensor):
        raise ConfigError(f"{path}: holds a {type(value).__name__}, expected one tensor")
    return value


def _read_pngs(folder: Path, channels: int, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise ConfigError(f"{folder}: no .png files in this folder")
    arrays = []
    for f in files:
        try:
            with warnings.catch_warnings():
                # PIL only warns between its pixel limit and twice it; here both are refused in one line.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(f) as im:  # reads the header; pixels are decoded by convert()
                    if im.size != (size, size):
                        raise ConfigError(f"{f}: {im.size[0]}x{im.size[1]} pixels, expected {size}x{size}")
                    arrays.append(np.asarray(im.convert("L" if channels == 1 else "RGB")))  # 8 bits per channel
        except ConfigError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ConfigError(f"{f}: refused as a decompression bomb ({' '.join(str(e).split())[:160]})") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ConfigError(f"{f}: not a readable PNG ({' '.join(str(e).split())[:160]})") from None
    return np.stack(arrays)  # (N, H, W) or (N, H, W, 3)


def _exotic(x: Tensor) -> str | None:
    """What makes ``x`` other than a dense tensor of values on a device, in words; None for a plain tensor."""
    if x.is_nested:
        return "a nested tensor"
    if x.layout != torch.strided:
        return f"a {str(x.layout).removeprefix('torch.')} tensor"  # sparse_coo, sparse_csr, jagged, ...
    if x.is_quantized:
        return f"a quantized tensor ({str(x.dtype).removeprefix('torch.')})"
    if x.is_meta:
        return "a meta tensor, which holds no values"
    return None


def to_images(array: np.ndarray | Tensor, path: Path, channels: int, size: int) -> Tensor:
    """(N, C, H, W) float in [-1, 1] from uint8 in [0, 255] or float in [0, 1], checked against (C, H, W)."""
    if isinstance(array, Tensor) and (kind := _exotic(array)):
        raise ConfigError(f"{path}: holds {kind}; expected a dense tensor of uint8 in [0, 255] or float in [0, 1]")
    if isinstance(array, np.ndarray) and not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))  # big-endian files are data too; torch reads native only
    try:
        x = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array.detach().cpu()
    except TypeError:  # strings, structured records: nothing torch can hold
        raise ConfigError(f"{path}: dtype {array.dtype}, expected uint8 in [0, 255] or float in [0, 1]") from None
    want = (
        f"(N, {size}, {size}) or (N, {channels}, {size}, {size})"
        if channels == 1
        else f"(N, {channels}, {size}, {size})"
    )
    if x.dim() == 4 and x.shape[-1] == channels and x.shape[1] != channels:
        x = x.permute(0, 3, 1, 2)  # PNG folders and most image arrays are channels-last
    if x.dim() == 3 and channels == 1:
        x = x.unsqueeze(1)
    if x.dim() != 4 or tuple(x.shape[1:]) != (channels, size, size):
        raise ConfigError(f"{path}: shape {tuple(array.shape)}, expected {want}")
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0  # the data's own scaling (data.from_uint8)
    elif x.dtype.is_floating_point:
        x = x.float()
        if not torch.isfinite(x).all():
            raise ConfigError(f"{path}: {int((~torch.isfinite(x)).sum())} values are NaN or infinite")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ConfigError(
                f"{path}: float values span [{x.min().item():.4g}, {x.max().item():.4g}], "
                f"expected [0, 1] (or uint8 in [0, 255])"
            )
        x = x * 2 - 1
    else:
        raise ConfigError(
            f"{path}: dtype {str(x.dtype).removeprefix('torch.')}, expected uint8 in [0, 255] or float in [0, 1]"
        )
    if len(x) < MIN_IMAGES:
        raise ConfigError(f"{path}: {len(x)} images, too few to score; need at least {MIN_IMAGES}")
    return x.contiguous()


def score(images: Tensor, data, *, cache_dir: str | Path, device: str | torch.device = "cpu") -> dict:
    """n, FID (with its standard error, floor and FID_inf where defined: evaluation/frechet.py), KID, precision,
    recall and recognizability of ``images`` against all of ``data``."""
    from .features import domain_classifier
    from .metrics import fidelity_metrics, recognizability

    cache_dir = Path(cache_dir)
    classifier = domain_classifier(data, cache_dir / "classifiers", device=device)
    recognizer = domain_classifier(data, cache_dir / "classifiers", device=device, reject=True)
    m = fidelity_metrics(
        images,
        data.images,
        classifier,
        cache_dir=cache_dir / "fidelity",
        reference_key=f"{data.name}-{data.fingerprint}",
        device=device,
    )  # as Evaluator does
    threshold = EvalConfig().recognizability_threshold
    return {
        "n": len(images),
        "fid": m["fid"],
        **{k: m[k] for k in ("fid_se", "fid_floor", "fid_inf") if k in m},
        "kid": m["kid"],
        "precision": m["precision"],
        "recall": m["recall"],
        "recognizability": recognizability(recognizer.probs(images), threshold),
        "dataset": data.name,
        "num_reference": m["num_reference"],
        "recognizability_threshold": threshold,
    }


def main(images_path: str, dataset: str, json_path: str | None) -> int:
    from ..training.data import DATASETS, DataUnavailable, load_dataset
    from .evaluate import default_cache_dir

    path = Path(images_path)
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset: unknown data set {dataset!r}; valid: {', '.join(sorted(DATASETS))}")
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    try:
        data = load_dataset(dataset)
    except DataUnavailable as err:
        raise ConfigError(str(err)) from None
    images = to_images(read_array(path, data.channels, data.image_size), path, data.channels, data.image_size)
    result = score(images, data, cache_dir=default_cache_dir())
    print(
        f"{path} against {dataset} ({result['num_reference']} images): "
        + "  ".join(
            f"{k} {result[k]:.4g}" if isinstance(result[k], float) else f"{k} {result[k]}" for k in KEYS if k in result
        )
    )
    if json_path:
        try:
            Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        except OSError as e:
            raise ConfigError(f"{json_path}: cannot write the scores ({e.strerror})") from None
    return 0
