import io
import os
import stat
import time
from pathlib import Path

import pytest
import torch

from harness.config import ConfigError
from harness.evaluation.features import HOLDOUT_FRACTION, DomainClassifier, domain_classifier
from harness.evaluation.metrics import class_accuracy, fidelity_metrics, inception_fid, private_dir, to_uint8
from harness.training.data import load_dataset, split_indices

KEYS = {"fid", "fid_se", "fid_floor", "kid", "kid_std", "precision", "recall", "num_generated", "num_reference"}


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
    assert extracted == [500, 500, 4500]  # the samples, one timed batch of the reference (the estimate), the reference
    assert any(p.name.startswith("mnist-5k-train-") and p.name.endswith("-features.pt") for p in tmp_path.iterdir())
    second = fidelity_metrics(held, train, clf, cache_dir=tmp_path, reference_key="mnist-5k-train")
    assert extracted == [500, 500, 4500, 500]  # the reference came from the cache
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
    probs = torch.tensor(
        [
            [0.95, 0.05, 0.00],
            [0.40, 0.35, 0.25],  # unsure, but its most probable class still counts
            [0.00, 0.01, 0.99],
        ]
    )
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
    assert value is None and reason.startswith(f"{corrupt} is not a plain tensor state dict")
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    value, reason = inception_fid(x, x, weights_path=str(not_a_dict))
    assert value is None and "not a state dict of tensors" in reason


class MakesMarker:
    """Unpickling this calls open(marker, "w"): what a hostile weights file would do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickled_code_in_inception_weights_never_runs(split, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"Conv2d_1a_3x3.conv.weight": MakesMarker(marker)}, evil)
    value, reason = inception_fid(split[1][:8], split[1][:8], weights_path=str(evil))
    assert value is None and "not a plain tensor state dict" in reason
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the file is armed: the check above is not vacuous
    assert marker.exists()


@pytest.mark.slow  # about 12 s: a whole evaluation against the 5,000 reference images
def test_an_evaluation_with_hostile_inception_weights_reports_them_unavailable(mnist_5k, split, tmp_path):
    from harness.config import SamplerSetting, build_config
    from harness.evaluation.evaluate import Evaluator

    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"w": MakesMarker(marker)}, evil)
    config = build_config({"eval": {"num_samples": 16, "batch_size": 16, "inception_weights": str(evil)}})
    evaluator = Evaluator(config, mnist_5k, cache_dir=Path(os.environ["HARNESS_CACHE_DIR"]))
    result, _ = evaluator.evaluate_setting(
        lambda x, t, y: torch.zeros_like(x), SamplerSetting(steps=2), step=1, final=True
    )
    assert "fid_inception" not in result.metrics
    assert "not a plain tensor state dict" in result.why_missing("fid_inception")
    assert not marker.exists()


@pytest.mark.slow  # about 25 s: InceptionV3 at 299x299 on the CPU
def test_safe_inception_weights_are_handed_to_torch_fidelity(split, tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):  # the architecture with its random initial weights
        def load_state_dict(self, state_dict, strict=True):
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(Unloaded("x", ["2048"], feature_extractor_weights_path=empty).state_dict(), weights)
    x = split[1][:4]
    value, reason = inception_fid(x, x, weights_path=str(weights))
    assert reason is None and abs(value) < 1e-2


def test_private_dir_is_created_0700_and_fixed_when_open(tmp_path):
    made = private_dir(tmp_path / "a" / "fidelity")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    opened = tmp_path / "open"
    opened.mkdir()
    opened.chmod(0o777)
    assert stat.S_IMODE(private_dir(opened).stat().st_mode) == 0o700


def test_private_dir_refuses_a_shared_parent_but_not_sticky_tmp(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone may rename our cache directory away and put theirs in its place
    with pytest.raises(ConfigError, match="another user can write"):
        private_dir(shared / "fidelity")
    shared.chmod(0o777 | stat.S_ISVTX)  # like /tmp: others cannot rename what is ours
    assert private_dir(shared / "fidelity").is_dir()


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_private_dir_refuses_a_directory_of_another_user(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 12345, 12345)
    with pytest.raises(ConfigError, match="belongs to uid 12345"):
        private_dir(theirs)


def test_fidelity_caches_live_in_a_private_dir(split, clf, tmp_path):
    cache = tmp_path / "fidelity"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    fidelity_metrics(split[1][:50], split[1][:50], clf, cache_dir=cache, reference_key="held")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700 and any(cache.iterdir())


def test_inception_fid_offline_fails_fast(split, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: the weights must be downloaded
    x = split[1][:8]
    start = time.monotonic()
    value, reason = inception_fid(x, x)
    if value is None:  # offline, as on this project's machines
        assert "weights_path" in reason and time.monotonic() - start < 10
    else:  # a machine with internet downloaded the weights
        assert reason is None and abs(value) < 1e-2
