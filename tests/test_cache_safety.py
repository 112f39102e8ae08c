"""Every cache entry of the harness (classifiers, recognizer, noise-aware classifier, autoencoder, reference
features) that cannot be read is made again after one warning line: never a crash, never executed.

Each location gets the same hostile files: a torch file and a bare pickle whose unpickling writes a marker
file, the first half of a good entry, the good entry with NaN in it, and an entry of another shape. The
marker is armed: ``pickle.loads`` of the same payload does write it (``test_the_payload_is_armed``).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness import make_schedule
from harness.config import AutoencoderConfig, ConfigError
from harness.evaluation import features, metrics, noisy_classifier
from harness.evaluation.noisy_classifier import Recipe
from harness.training import autoencoder as latent
from harness.training.data import ImageData, fingerprint

SCHEDULE = make_schedule("linear", 100)
RECIPE = Recipe(widths=(8, 16), steps=3, batch_size=8)
TINY_AE = AutoencoderConfig(steps=3, channels=8, batch_size=16)


def _tiny_data() -> ImageData:
    """40 images of 8x8 in two classes: the smallest data every cached network accepts."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    images = (torch.rand(40, 1, 8, 8, generator=g) * 0.2 + labels.view(-1, 1, 1, 1) * 0.8 - 0.5).clamp(-1, 1)
    return ImageData("tiny", images, labels, 2, fingerprint(images, labels))


DATA = _tiny_data()


class _Payload:
    """Unpickling this writes ``marker``: the code a crafted cache file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


@dataclass
class Location:
    """One cache location: how to fill it (or read it back), and where its file lies."""

    name: str
    get: Callable[[Path], object]  # cache dir -> the cached thing (made or loaded)
    path: Callable[[Path], Path]  # cache dir -> the entry's file
    what: str  # as the warning line names it


def _reference_features(cache: Path) -> torch.Tensor:
    clf = features.domain_classifier(DATA, cache / "classifiers", epochs=1, progress=False)
    u8 = metrics.to_uint8(DATA.images)
    return metrics.reference_features(u8, clf, cache / "fidelity" / "tiny-ref", progress=False)


def _reference_path(cache: Path) -> Path:
    clf = features.domain_classifier(DATA, cache / "classifiers", epochs=1, progress=False)
    return cache / "fidelity" / f"tiny-ref-{features.fidelity_extractor_prefix(clf)}-features.pt"


LOCATIONS = [
    Location(
        "classifier",
        lambda c: features.domain_classifier(DATA, c, epochs=1, progress=False),
        lambda c: features.cache_path(DATA, c, epochs=1),
        "domain classifier tiny",
    ),
    Location(
        "recognizer",
        lambda c: features.domain_classifier(DATA, c, epochs=1, reject=True, progress=False),
        lambda c: features.cache_path(DATA, c, epochs=1, reject=True),
        "recognizer tiny",
    ),
    Location(
        "noisy-classifier",
        lambda c: noisy_classifier.noisy_classifier(DATA, SCHEDULE, c, RECIPE, progress=False),
        lambda c: noisy_classifier.cache_path(DATA, SCHEDULE, c, RECIPE),
        "noise-aware classifier tiny linear",
    ),
    Location(
        "autoencoder",
        lambda c: latent.latent_space(DATA, TINY_AE, c, progress=False),
        lambda c: latent.cache_path(DATA, TINY_AE, c),
        "autoencoder tiny",
    ),
    Location("reference-features", _reference_features, _reference_path, "reference features tiny-ref"),
]


def _nan_entry(saved: dict) -> dict:
    """``saved`` with its first floating-point tensor (or its scale factor) set to NaN."""
    if "scale" in saved:
        return {**saved, "scale": float("nan")}
    tensors = saved.get("state_dict", saved)
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors = {**tensors, name: torch.full_like(tensors[name], float("nan"))}
    return {**saved, "state_dict": tensors} if "state_dict" in saved else tensors


def _other_shape(saved: dict) -> dict:
    """``saved`` as if made for other images: one row fewer, another shape, a wrong-sized weight."""
    if "features" in saved:
        return {"features": saved["features"][1:]}
    if "shape" in saved:
        return {**saved, "shape": {**saved["shape"], "num_classes": saved["shape"]["num_classes"] + 1}}
    name = next(iter(saved["state_dict"]))
    return {**saved, "state_dict": {**saved["state_dict"], name: torch.zeros(3)}}


def _hostile(kind: str, good: bytes, marker: Path) -> bytes:
    saved = torch.load(io.BytesIO(good), weights_only=True)
    out = io.BytesIO()
    if kind == "torch-pickle":  # the layout torch.save writes, a payload where the weights were
        torch.save({**saved, "state_dict": _Payload(marker), "features": _Payload(marker)}, out)
    elif kind == "bare-pickle":
        return pickle.dumps(_Payload(marker))
    elif kind == "truncated":  # a kill in the middle of a copy
        return good[: len(good) // 2]
    elif kind == "nan":
        torch.save(_nan_entry(saved), out)
    elif kind == "other-shape":
        torch.save(_other_shape(saved), out)
    elif kind == "empty":
        return b""
    return out.getvalue()


def _tensors(blob: bytes) -> dict[str, list]:
    """The tensors and the scale factor of an entry, as nested lists: what must come out the same when remade."""
    saved = torch.load(io.BytesIO(blob), weights_only=True)
    tensors = {**saved.get("state_dict", {}), **({"features": saved["features"]} if "features" in saved else {})}
    return {**{k: v.tolist() for k, v in tensors.items()}, "scale": saved.get("scale")}


KINDS = ["torch-pickle", "bare-pickle", "truncated", "nan", "other-shape", "empty"]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, bytes]:
    """A good entry of each location, made once."""
    out = {}
    for loc in LOCATIONS:
        cache = tmp_path_factory.mktemp(loc.name)
        loc.get(cache)
        out[loc.name] = loc.path(cache).read_bytes()
    return out


def test_the_payload_is_armed(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loc", LOCATIONS, ids=[loc.name for loc in LOCATIONS])
def test_an_unreadable_entry_is_made_again_with_one_warning_and_never_run(loc, kind, good, tmp_path, capsys, recwarn):
    cache, marker = tmp_path / "cache", tmp_path / "ran"
    if loc.name == "reference-features":  # its classifier must be there and good, so only the features are bad
        features.domain_classifier(DATA, cache / "classifiers", epochs=1, progress=False)
    path = loc.path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_hostile(kind, good[loc.name], marker))
    capsys.readouterr()

    made = loc.get(cache)

    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert warnings == [warnings[0]] and warnings[0].startswith(f"warning: making the {loc.what} again: cannot read")
    assert str(path) in warnings[0]
    assert [str(w.message) for w in recwarn] == []  # nor a Python warning beside the line: torch's are silenced
    assert not marker.exists()
    assert getattr(made, "from_cache", False) is False
    assert _tensors(path.read_bytes()) == _tensors(good[loc.name])  # the same seeded entry, readable again
    again = loc.get(cache)
    assert getattr(again, "from_cache", True) and capsys.readouterr().err == ""


def test_a_nan_scale_factor_names_the_cache_and_never_reaches_the_loss(good, tmp_path, capsys):
    cache = tmp_path / "cache"
    path = latent.cache_path(DATA, TINY_AE, cache)
    cache.mkdir()
    path.write_bytes(_hostile("nan", good["autoencoder"], tmp_path / "ran"))
    space = latent.latent_space(DATA, TINY_AE, cache, progress=False)
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"warning: making the autoencoder tiny again: cannot read {path} "
        "(scale factor s = nan is not a positive finite number)"
    )
    assert 0 < space.scale < float("inf") and torch.isfinite(space.encode(DATA.images)).all()


@pytest.mark.parametrize("loc", LOCATIONS, ids=[loc.name for loc in LOCATIONS])
def test_a_cache_folder_that_is_a_file_is_one_line(loc, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder goes")
    with pytest.raises(ConfigError) as err:
        loc.get(blocker)
    message = str(err.value)
    assert message.startswith(f"{blocker}: is a file, so the cache folder ") and "\n" not in message
    assert blocker.read_text() == "a file where the cache folder goes"


def test_score_with_a_cache_folder_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    import numpy as np

    from harness.cli import main

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "classifiers").write_text("not a folder")
    np.save(tmp_path / "x.npy", np.zeros((20, 28, 28), np.uint8))
    assert main(["score", str(tmp_path / "x.npy")]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"error: {tmp_path / 'cache' / 'classifiers'}: is a file, so the cache folder "
        f"{tmp_path / 'cache' / 'classifiers'} cannot be made"
    ]
