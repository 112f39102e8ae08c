"""Sample-quality metrics: FID, KID and precision/recall in the domain classifier's feature space,
the standard InceptionV3 FID when its weights are at hand, and classifier-based scores
(recognizability comes from the recognizer, the domain classifier with a reject class).

All image tensors are (N, C, H, W) in [-1, 1]. They are quantized to uint8 before any feature
extraction, as torch-fidelity expects, so numbers match those of the same samples saved as PNGs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import time
import urllib.request
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config.schema import METRICS, PRC_NEIGHBORHOOD
from ..once import cache_folder, check_tensors, load_entry, made_once
from ..private import private_dir
from ..training.checkpoint import save_atomic
from .features import DomainClassifier, fidelity_extractor_name, fidelity_extractor_prefix
from .frechet import Gaussian, fid_floor, fid_inf, fid_se, frechet_distance

KID_SUBSET_SIZE = 1000  # torch-fidelity's default, lowered to the sample count when there are fewer
BATCH_SIZE = 500
DOWNLOAD_PROBE_TIMEOUT = 5.0  # seconds; offline, name resolution fails at once, a blackholed route waits this long


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 in [0, 255]: u = round((x + 1) * 127.5), the inverse of data.from_uint8."""
    return ((x.detach().cpu().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


class _Images(Dataset):
    """A uint8 tensor (N, C, H, W) as the map-style Dataset torch-fidelity reads inputs from."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def _check_images(name: str, x: Tensor, min_count: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] < min_count:
        raise ValueError(f"{name} needs at least {min_count} images, got {x.shape[0]}")


def _content_key(u8: Tensor) -> str:
    return hashlib.sha256(u8.contiguous().numpy().tobytes()).hexdigest()[:12]


def _torch_fidelity_device(device: str | torch.device):
    # torch-fidelity only knows cuda=True/False and calls .cuda(); choose the index by context.
    device = torch.device(device)
    if device.type == "cuda":
        return True, torch.cuda.device(device)
    return False, contextlib.nullcontext()


def fidelity_metrics(
    generated: Tensor,
    reference: Tensor,
    clf: DomainClassifier,
    *,
    cache_dir: str | Path,
    reference_key: str,
    device: str | torch.device = "cpu",
    kid_subset_size: int | None = None,
    progress: bool | None = None,
) -> dict:
    """FID (Heusel et al. 2017), KID (Binkowski et al. 2018) and precision/recall (Kynkaanniemi et
    al. 2019) of ``generated`` against ``reference``, in the feature space of ``clf``, with the FID's
    N-corrected value, standard error and floor (``fid_inf``, ``fid_se``, ``fid_floor``: evaluation/frechet.py).

    Features come from torch-fidelity's extractor; KID and precision/recall from torch-fidelity's functions
    of features (its ``calculate_metrics`` gives the same numbers), every FID from ``frechet_distance``.
    The reference's features are made once (``reference_features``) and cached in ``cache_dir`` under a
    name made of ``reference_key``, a hash of the reference images and the classifier's fingerprint, so a
    changed reference set or classifier can never be served stale numbers. ``kid_subset_size`` defaults
    to min(1000, N_gen, N_ref).
    """
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    fewest = max(METRICS[m].min_samples for m in ("fid", "kid", "precision", "recall"))  # the ones computed here
    _check_images("generated", generated, fewest)
    _check_images("reference", reference, fewest)
    if generated.shape[1:] != reference.shape[1:]:
        raise ValueError(f"generated {tuple(generated.shape[1:])} and reference {tuple(reference.shape[1:])} differ")
    if not reference_key or os.sep in reference_key or "/" in reference_key:
        raise ValueError(f"reference_key must be a non-empty file-name part without '/', got {reference_key!r}")
    n_gen, n_ref = generated.shape[0], reference.shape[0]
    largest = min(n_gen, n_ref)
    subset = min(KID_SUBSET_SIZE, largest) if kid_subset_size is None else kid_subset_size
    if not 2 <= subset <= largest:  # the unbiased MMD estimate needs pairs within each subset
        raise ValueError(f"kid_subset_size must be in [2, min(N_gen, N_ref) = {largest}], got {subset}")

    ref_u8 = to_uint8(reference)
    content = _content_key(ref_u8)
    gen = features(to_uint8(generated), clf, device)  # (N, D)
    ref = reference_features(ref_u8, clf, Path(cache_dir) / f"{reference_key}-{content}", device, progress)
    kid = kid_features_to_metric(gen, ref, kid_subset_size=subset, verbose=False)
    prc = prc_features_to_metric(gen, ref, prc_neighborhood=PRC_NEIGHBORHOOD, save_cpu_ram=True, verbose=False)
    g, r = gen.double().numpy(), ref.double().numpy()
    target = Gaussian.of(r)
    out = {
        "fid": frechet_distance(Gaussian.of(g), target),
        "fid_se": fid_se(g, target),
        "kid": kid["kernel_inception_distance_mean"],
        "kid_std": kid["kernel_inception_distance_std"],
        "precision": prc["precision"],  # prc's convention: features_1 generated, features_2 real
        "recall": prc["recall"],
        "num_generated": n_gen,
        "num_reference": n_ref,
    }
    extras = {
        "fid_inf": fid_inf(g, target),  # None below N = 4 D
        "fid_floor": fid_floor(r, n_gen, seed=int(content, 16)),  # None above N = M / 2; keyed by the content
    }
    return {**out, **{k: v for k, v in extras.items() if v is not None}}


def features(u8: Tensor, clf: DomainClassifier, device: str | torch.device = "cpu") -> Tensor:
    """(N, D) float32 features of uint8 images (N, C, H, W), through torch-fidelity's extractor for ``clf``."""
    from torch_fidelity import utils

    cuda, on_device = _torch_fidelity_device(device)
    with on_device:
        extractor = utils.create_feature_extractor(fidelity_extractor_name(clf), ["features"], cuda=cuda, verbose=False)
        # save_cpu_ram: DataLoader workers would fork the process to index an in-memory tensor
        return utils.get_featuresdict_from_dataset(_Images(u8), extractor, BATCH_SIZE, cuda, True, False)["features"]


def reference_features(
    u8: Tensor, clf: DomainClassifier, stem: Path, device: str | torch.device = "cpu", progress: bool | None = None
) -> Tensor:
    """The features of the reference images ``u8``, made once per reference and classifier (``made_once``)
    and kept as a plain tensor at ``<stem>-<extractor>-features.pt`` in a ``private_dir``."""
    path = private_dir(cache_folder(stem.parent, 0o700)) / f"{stem.name}-{fidelity_extractor_prefix(clf)}-features.pt"

    def load(p: Path) -> Tensor:
        f = load_entry(p)["features"]
        check_tensors({"features": f})
        if f.shape != (len(u8), clf.net.head.in_features):  # (N, D), one row per reference image
            raise ValueError(f"features of shape {tuple(f.shape)}, expected ({len(u8)}, {clf.net.head.in_features})")
        return f

    def make() -> Tensor:
        f = features(u8, clf, device)
        save_atomic({"features": f}, path)
        return f

    def estimate() -> float:  # one batch timed, scaled to the set
        start = time.perf_counter()
        features(u8[:BATCH_SIZE], clf, device)
        return (time.perf_counter() - start) * len(u8) / min(len(u8), BATCH_SIZE)

    return made_once(
        path,
        load,
        make,
        what=f"reference features {stem.name}",
        why=f"FID, KID and precision/recall compare samples with these {len(u8):,} images; once per data set",
        estimate=estimate,
        progress=progress,
    )


class WeightsUnavailable(Exception):
    """InceptionV3 weights cannot be had, or a file is not a plain state dict; the message says which."""


def inception_weights(weights_path: str | None) -> dict[str, Tensor]:
    """torch-fidelity's InceptionV3 weights as a state dict, read with ``weights_only=True`` only.

    ``weights_path`` names a file a user (or a spec) chose; without it the published file is read
    from (or downloaded, hash-checked, into) the torch.hub cache. torch-fidelity itself unpickles
    either with ``weights_only=False``, so a pickle in them would run code: it never gets to read them.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    if weights_path is None:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)
        if not cached.is_file():
            # torch.hub downloads without a timeout; probe first so that offline fails fast.
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(URL_INCEPTION_V3, method="HEAD"), timeout=DOWNLOAD_PROBE_TIMEOUT
                ):
                    pass
            except Exception as e:
                raise WeightsUnavailable(
                    f"InceptionV3 weights are not in {cached.parent} and cannot be downloaded ({e}); "
                    f"pass weights_path= the file {os.path.basename(URL_INCEPTION_V3)}"
                ) from None
        state = torch.hub.load_state_dict_from_url(
            URL_INCEPTION_V3, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
        source = str(cached)
    else:
        if not Path(weights_path).is_file():
            raise WeightsUnavailable(f"InceptionV3 weights not found at {weights_path}")
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsUnavailable(
                f"{weights_path} is not a plain tensor state dict, so it was not loaded "
                f"(only weights_only loads are allowed): {' '.join(str(e).split())[:200]}"
            ) from None
        source = weights_path
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise WeightsUnavailable(f"{source} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def inception_fid(
    generated: Tensor, reference: Tensor, *, weights_path: str | None = None, device: str | torch.device = "cpu"
) -> tuple[float | None, str | None]:
    """Standard FID (Heusel et al. 2017) in torch-fidelity's InceptionV3 pool3 space (2048-D).

    Images become 3-channel uint8; torch-fidelity resizes them to 299x299 itself, with its
    TensorFlow-compatible bilinear interpolation. Returns (fid, None), or (None, reason) when the
    weights are unavailable or anything else fails: this never raises, so a run without the
    weights still reports every other metric.
    """
    try:
        state = inception_weights(weights_path)
        import torch_fidelity

        # torch-fidelity torch.load()s whatever it is handed with weights_only=False; what it is handed
        # here is our own serialization of tensors that were loaded safely, so only tensors come out.
        weights = io.BytesIO()
        torch.save(state, weights)
        weights.seek(0)

        def rgb(x: Tensor) -> Tensor:
            u8 = to_uint8(x)
            return u8.expand(-1, 3, -1, -1).contiguous() if u8.shape[1] == 1 else u8

        cuda, on_device = _torch_fidelity_device(device)
        with on_device:
            m = torch_fidelity.calculate_metrics(
                input1=_Images(rgb(generated)),
                input2=_Images(rgb(reference)),
                fid=True,
                feature_extractor="inception-v3-compat",
                feature_extractor_weights_path=weights,
                cuda=cuda,
                cache=False,
                save_cpu_ram=True,
                verbose=False,
            )
        return float(m["frechet_inception_distance"]), None
    except WeightsUnavailable as e:
        return None, str(e)
    except Exception as e:  # the caller logs the reason and carries on
        return None, f"InceptionV3 FID failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"


def recognizable(probs: Tensor, threshold: float = 0.9) -> Tensor:
    """(N,) bool: the recognizer names a class, not its reject class, with p(y | x) >= threshold.

    ``probs`` (N, K + 1) come from the recognizer (``domain_classifier(..., reject=True)``), whose
    last column is the reject class of synthetic non-digits. A plain softmax classifier is confident
    on noise; its reject class is what keeps noise, blobs and shuffled pixels out.
    """
    if probs.dim() != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (N, K + 1) with N > 0 and a reject column, got shape {tuple(probs.shape)}")
    top = probs.max(dim=1)
    return (top.indices < probs.shape[1] - 1) & (top.values >= threshold)


def recognizability(probs: Tensor, threshold: float = 0.9) -> float:
    """Fraction of samples that are ``recognizable``: a fraction of the set, never a switch on it."""
    return recognizable(probs, threshold).float().mean().item()


def recognized_class_accuracy(probs: Tensor, labels: Tensor, threshold: float = 0.9) -> float:
    """Among recognizable samples, the fraction whose recognized class is the label; NaN if none is recognizable.

    A conditional model that draws a clear 3 when asked for a 7 is wrong here, while one that draws
    noise is not counted at all: its failure shows in recognizability instead.
    """
    if labels.shape != probs.shape[:1]:
        raise ValueError(f"need labels (N,) for probs {tuple(probs.shape)}, got {tuple(labels.shape)}")
    mask = recognizable(probs, threshold)
    if not mask.any():
        return math.nan
    return (probs[mask].argmax(dim=1) == labels.to(probs.device)[mask]).float().mean().item()


def class_accuracy(probs: Tensor, labels: Tensor) -> float:
    """Fraction of samples whose most probable class is the label (e.g. the class a sample was conditioned on)."""
    if probs.dim() != 2 or probs.shape[0] == 0 or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"need probs (N, K) with N > 0 and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}"
        )
    return (probs.argmax(dim=1) == labels.to(probs.device)).float().mean().item()
