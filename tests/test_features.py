import os
from pathlib import Path

import pytest
import torch

from harness.evaluation import features
from harness.evaluation.features import (
    FEATURE_DIM,
    HOLDOUT_FRACTION,
    DomainClassifier,
    cache_path,
    domain_classifier,
    fidelity_extractor_name,
    non_digits,
)
from harness.training.data import load_dataset, split_indices


@pytest.fixture(scope="module")
def mnist_5k():
    return load_dataset("mnist-5k")


@pytest.fixture(scope="module")
def clf(mnist_5k, tmp_path_factory) -> DomainClassifier:
    # One cache directory for the whole session: test_metrics.py loads what this trains, and vice versa.
    return domain_classifier(mnist_5k, Path(os.environ["HARNESS_CACHE_DIR"]) / "classifiers")


@pytest.fixture(scope="module")
def small(mnist_5k):
    from harness.training.data import from_uint8

    # Every tenth digit: 500 images, 50 per class (the full set is sorted by class).
    u8 = ((mnist_5k.images[::10, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    return from_uint8("mnist-500", u8, mnist_5k.labels[::10].numpy(), 10)


def test_accuracy_on_mnist_5k_held_out(clf, mnist_5k):
    assert clf.accuracy >= 0.96
    _, held = split_indices(len(mnist_5k), HOLDOUT_FRACTION, seed=0)
    predicted = clf.probs(mnist_5k.images[held]).argmax(dim=1)
    assert (predicted == mnist_5k.labels[held]).float().mean().item() == pytest.approx(clf.accuracy)


def test_features_and_probs_shapes(clf, mnist_5k):
    x = mnist_5k.images[:1500]  # more than one internal batch
    phi, p = clf.features(x), clf.probs(x)
    assert phi.shape == (1500, FEATURE_DIM) and p.shape == (1500, 10)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(1500))
    assert not phi.requires_grad and not clf.net.training


def test_training_is_deterministic(small, tmp_path):
    a = domain_classifier(small, tmp_path / "a", epochs=1)
    b = domain_classifier(small, tmp_path / "b", epochs=1)
    assert not a.from_cache and not b.from_cache
    assert a.fingerprint == b.fingerprint and a.accuracy == b.accuracy
    assert domain_classifier(small, tmp_path / "c", epochs=1, seed=1).fingerprint != a.fingerprint


def test_training_leaves_global_rng_alone(small, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    domain_classifier(small, tmp_path, epochs=1)
    assert torch.equal(torch.rand(3), expected)


def test_second_call_loads_from_cache(small, tmp_path, monkeypatch):
    first = domain_classifier(small, tmp_path, epochs=1)
    path = cache_path(small, tmp_path, epochs=1)
    # no temp file left behind, only the lock that made it once
    assert path.is_file() and sorted(os.listdir(tmp_path)) == [path.name, f"{path.name}.lock"]

    def fail(*args, **kwargs):
        raise AssertionError("trained although a cached classifier exists")

    monkeypatch.setattr(features, "train_classifier", fail)
    second = domain_classifier(small, tmp_path, epochs=1)
    assert second.from_cache and second.fingerprint == first.fingerprint and second.accuracy == first.accuracy
    torch.testing.assert_close(second.features(small.images[:8]), first.features(small.images[:8]))


def test_cache_is_keyed_by_data(small, mnist_5k, tmp_path):
    assert cache_path(small, tmp_path) != cache_path(mnist_5k, tmp_path)
    assert small.fingerprint in cache_path(small, tmp_path).name


def test_unreadable_cache_is_rebuilt(small, tmp_path, capsys):
    path = cache_path(small, tmp_path, epochs=1)
    path.write_bytes(b"truncated")
    rebuilt = domain_classifier(small, tmp_path, epochs=1, progress=False)
    (line,) = capsys.readouterr().err.splitlines()
    assert not rebuilt.from_cache and line.startswith(
        f"warning: making the domain classifier mnist-500 again: cannot read {path}"
    )
    assert domain_classifier(small, tmp_path, epochs=1).from_cache


def test_fidelity_extractor_is_registered_once_and_matches_clf(clf, mnist_5k):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    name = fidelity_extractor_name(clf)
    assert fidelity_extractor_name(clf) == name and clf.fingerprint in name
    assert name in FEATURE_EXTRACTORS_REGISTRY
    extractor = create_feature_extractor(name, ["features", "logits"], cuda=False, verbose=False)
    x = mnist_5k.images[:16]
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)
    phi, logits = extractor(u8)
    torch.testing.assert_close(phi, clf.features(x))
    torch.testing.assert_close(logits.softmax(dim=1), clf.probs(x))
    assert next(clf.net.parameters()).requires_grad is False  # untouched by torch-fidelity's setup
    with pytest.raises(ValueError, match="uint8"):
        extractor(x)


def test_non_digits_are_seeded_images_in_range(small):
    x = small.images[:64]
    a = non_digits(x, torch.Generator().manual_seed(0))
    b = non_digits(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, non_digits(x, torch.Generator().manual_seed(1)))
    assert not any(torch.equal(a[i], x[i]) for i in range(len(x)))


def test_recognizer_has_a_reject_class_and_its_own_cache(small, tmp_path):
    recognizer = domain_classifier(small, tmp_path, epochs=1, reject=True)
    assert recognizer.net.head.out_features == small.num_classes + 1
    path = cache_path(small, tmp_path, epochs=1, reject=True)
    assert path.name.startswith("recognizer-") and path != cache_path(small, tmp_path, epochs=1)
    assert sorted(os.listdir(tmp_path)) == [path.name, f"{path.name}.lock"]
    again = domain_classifier(small, tmp_path, epochs=1, reject=True)
    assert again.from_cache and again.fingerprint == recognizer.fingerprint
