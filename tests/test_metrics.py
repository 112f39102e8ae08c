import os
import time
from pathlib import Path

import pytest
import torch

from harness.data import load_dataset, split_indices
from harness.features import HOLDOUT_FRACTION, DomainClassifier, domain_classifier
from harness.metrics import class_accuracy, fidelity_metrics, inception_fid, to_uint8

KEYS = {"fid", "kid", "kid_std", "precision", "recall", "num_generated", "num_reference"}


@pytest.fixture(scope="module")
def mnist_5k():
    return load_dataset("mnist-5k")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    # Shared with test_features.py, so the classifier is trained once per session.
    return Path(os.environ["HARNESS_CACHE_DIR"]) / "classifiers"


@pytest.fixture(scope="module")
def clf(mnist_5k, cache_dir) -> DomainClassifier:
    return domain_classifier(mnist_5k, cache_dir)


@pytest.fixture(scope="module")
def split(mnist_5k):
    train, held = split_indices(len(mnist_5k), HOLDOUT_FRACTION, seed=0)
    return mnist_5k.images[train], mnist_5k.images[held]  # (4500, 1, 28, 28), (500, 1, 28, 28)


@pytest.fixture(scope="module")
def real_vs_train(split, clf, tmp_path_factory):
    train, held = split
    return fidelity_metrics(held, train, clf, cache_dir=tmp_path_factory.mktemp("fid"), reference_key="train")


def test_classifier_cache_is_reused(mnist_5k, cache_dir, clf):
    again = domain_classifier(mnist_5k, cache_dir)
    assert again.from_cache and again.fingerprint == clf.fingerprint


def test_real_held_out_images_score_far_better_than_noise(split, clf, real_vs_train, tmp_path):
    train, _ = split
    noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_vs_train = fidelity_metrics(noise, train, clf, cache_dir=tmp_path, reference_key="train")
    assert set(real_vs_train) == set(noise_vs_train) == KEYS
    assert real_vs_train["num_generated"] == 500 and real_vs_train["num_reference"] == 4500
    assert real_vs_train["fid"] < 25.0  # 5.2 measured (2 threads)
    assert noise_vs_train["fid"] > 50 * real_vs_train["fid"]  # 2808 measured
    assert noise_vs_train["kid"] > 100 * abs(real_vs_train["kid"])
    assert real_vs_train["precision"] > 0.7 and real_vs_train["recall"] > 0.7
    assert noise_vs_train["precision"] < 0.05 and noise_vs_train["recall"] < 0.05


def test_fid_of_a_set_against_itself_is_zero(split, clf, tmp_path):
    _, held = split
    m = fidelity_metrics(held, held, clf, cache_dir=tmp_path, reference_key="held")
    assert abs(m["fid"]) < 1e-3
    assert m["precision"] == 1.0 and m["recall"] == 1.0


def test_reference_features_are_cached_by_key(split, clf, tmp_path, monkeypatch):
    import torch_fidelity.utils

    train, held = split
    extracted = []
    original = torch_fidelity.utils.get_featuresdict_from_dataset

    def counting(input, *args, **kwargs):
        extracted.append(len(input))
        return original(input, *args, **kwargs)

    monkeypatch.setattr(torch_fidelity.utils, "get_featuresdict_from_dataset", counting)
    first = fidelity_metrics(held, train, clf, cache_dir=tmp_path, reference_key="mnist-5k-train")
    assert extracted == [500, 4500]
    assert any(p.name.startswith("mnist-5k-train-") for p in tmp_path.iterdir())
    second = fidelity_metrics(held, train, clf, cache_dir=tmp_path, reference_key="mnist-5k-train")
    assert extracted == [500, 4500, 500]  # the reference came from the cache
    assert second == first
    # A different reference under the same key is not served the stale statistics.
    fidelity_metrics(held, train[:1000], clf, cache_dir=tmp_path, reference_key="mnist-5k-train")
    assert extracted[-2:] == [500, 1000]


def test_kid_subset_size_default_and_bounds(split, clf, tmp_path):
    train, held = split
    small = fidelity_metrics(held[:50], train, clf, cache_dir=tmp_path, reference_key="train")  # default 50
    assert small["num_generated"] == 50
    with pytest.raises(ValueError, match="kid_subset_size"):
        fidelity_metrics(held[:50], train, clf, cache_dir=tmp_path, reference_key="train", kid_subset_size=51)
    with pytest.raises(ValueError, match="reference_key"):
        fidelity_metrics(held, train, clf, cache_dir=tmp_path, reference_key="a/b")


def test_to_uint8_inverts_the_data_scaling(mnist_5k):
    u8 = to_uint8(mnist_5k.images[:100])
    torch.testing.assert_close(u8.float() / 127.5 - 1, mnist_5k.images[:100], rtol=0, atol=1e-6)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


def test_class_accuracy_on_hand_made_probs():
    probs = torch.tensor([
        [0.95, 0.05, 0.00],
        [0.40, 0.35, 0.25],  # unsure, but its most probable class still counts
        [0.00, 0.01, 0.99],
    ])
    assert class_accuracy(probs, torch.tensor([0, 0, 2])) == pytest.approx(1.0)
    assert class_accuracy(probs, torch.tensor([0, 1, 1])) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        class_accuracy(probs, torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        class_accuracy(torch.empty(0, 3), torch.empty(0))


def test_class_accuracy_of_real_digits_is_the_classifier_accuracy(clf, split, mnist_5k):
    _, held_idx = split_indices(len(mnist_5k), HOLDOUT_FRACTION, seed=0)
    probs = clf.probs(mnist_5k.images[held_idx])
    assert class_accuracy(probs, mnist_5k.labels[held_idx]) == pytest.approx(clf.accuracy)
    # Recognizability is not this classifier's call (it is confident on noise): see test_recognizability.py.


def test_inception_fid_without_weights_file_returns_reason(split, tmp_path):
    x = split[1][:8]
    value, reason = inception_fid(x, x, weights_path=str(tmp_path / "missing.pth"))
    assert value is None and str(tmp_path / "missing.pth") in reason
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    value, reason = inception_fid(x, x, weights_path=str(corrupt))  # must not raise
    assert value is None and reason.startswith("InceptionV3 FID failed")


def test_inception_fid_offline_fails_fast(split, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: the weights must be downloaded
    x = split[1][:8]
    start = time.monotonic()
    value, reason = inception_fid(x, x)
    if value is None:  # offline, as on this project's machines
        assert "weights_path" in reason and time.monotonic() - start < 10
    else:  # a machine with internet downloaded the weights
        assert reason is None and abs(value) < 1e-2
