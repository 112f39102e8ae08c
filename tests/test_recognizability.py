"""Recognizability calibration: real digits pass, garbage does not, and a mix scores its share.

Every case is scored by the recognizer of mnist-5k (seed 0), which never saw the held-out split.
The bounds are the ones the README promises; the measured figures sit in the comments.
"""

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.config import build_config
from harness.evaluation.features import BLOB_CELLS, HOLDOUT_FRACTION, DomainClassifier, domain_classifier
from harness.evaluation.metrics import recognizability, recognizable, recognized_class_accuracy
from harness.result import EvalResult
from harness.training.data import load_dataset, split_indices

N = 500  # images per case: one held-out split's worth


@pytest.fixture(scope="module")
def mnist_5k():
    return load_dataset("mnist-5k")


@pytest.fixture(scope="module")
def recognizer(mnist_5k) -> DomainClassifier:
    return domain_classifier(mnist_5k, Path(os.environ["HARNESS_CACHE_DIR"]) / "classifiers", reject=True)


@pytest.fixture(scope="module")
def held(mnist_5k):
    _, held_idx = split_indices(len(mnist_5k), HOLDOUT_FRACTION, seed=0)
    return mnist_5k.images[held_idx], mnist_5k.labels[held_idx]  # (500, 1, 28, 28), (500,)


def rec(recognizer, x) -> float:
    return recognizability(recognizer.probs(x))


def shifted(x, seed):
    """Each digit moved by its own whole-pixel offset in [-2, 2]^2 (background filled in)."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(-2, 3, (len(x), 2), generator=g).tolist()
    return torch.stack([torch.roll(img + 1, (dy, dx), (1, 2)) for img, (dx, dy) in zip(x, offsets)]) - 1


def rotated(x, degrees):
    a = torch.tensor(math.radians(degrees))
    theta = torch.tensor([[a.cos(), -a.sin(), 0.0], [a.sin(), a.cos(), 0.0]]).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", align_corners=False) - 1


def garbage(kind: str, held_images, seed: int):
    g = torch.Generator().manual_seed(seed)
    shape = (N, 1, 28, 28)
    if kind == "uniform noise":
        return torch.rand(shape, generator=g) * 2 - 1
    if kind == "gaussian noise":
        return torch.randn(shape, generator=g).clamp(-1, 1)
    if kind in ("smooth blobs", "binary blobs"):  # at a blob scale the recognizer's reject class never saw
        assert 7 not in BLOB_CELLS
        smooth = F.interpolate(torch.randn(N, 1, 7, 7, generator=g), size=28, mode="bilinear", align_corners=False)
        return (smooth * 2).clamp(-1, 1) if kind == "smooth blobs" else torch.where(smooth > 0.5, 1.0, -1.0)
    if kind == "constant":  # a kind of image the reject class never saw at all
        return (torch.rand(N, 1, 1, 1, generator=g) * 2 - 1).expand(shape).contiguous()
    if kind == "pixel-shuffled digits":
        order = torch.rand(N, 784, generator=g).argsort(dim=1)
        return held_images.flatten(1).gather(1, order).view(shape)
    if kind == "block speckle":  # 2x2 dots under a centred Gaussian: neither the dot size nor the envelope trained
        yy, xx = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
        envelope = torch.exp(-((yy - 6.5) ** 2 + (xx - 6.5) ** 2) / (2 * 3.5**2))
        dots = torch.rand(N, 1, 14, 14, generator=g) < 0.4 * envelope
        return F.interpolate(torch.where(dots, 1.0, -1.0), scale_factor=2, mode="nearest")
    raise KeyError(kind)


# 100 samples of the ablation-backbone quick profile's DiT (seed 0, EMA weights after 800 steps, DDIM-25),
# uint8: scattered dots on black, not digits. The recognizer before speckle joined its non-digits called
# 38% of them recognizable, 68 of 76 an "8".
UNDERTRAINED_DIT = Path(__file__).parent / "data" / "dit_speckle_samples.npy"


def test_held_out_digits_are_recognizable(recognizer, held):
    images, labels = held
    assert rec(recognizer, images) >= 0.9  # 0.960 measured
    assert recognized_class_accuracy(recognizer.probs(images), labels) >= 0.98  # 0.998 measured


@pytest.mark.parametrize("seed", [0, 1])
def test_shifted_digits_are_recognizable(recognizer, held, seed):
    assert rec(recognizer, shifted(held[0], seed)) >= 0.9  # 0.940 and 0.950 measured


@pytest.mark.parametrize("degrees", [-10, 10])
def test_rotated_digits_are_recognizable(recognizer, held, degrees):
    assert rec(recognizer, rotated(held[0], degrees)) >= 0.9  # 0.952 and 0.928 measured


@pytest.mark.parametrize(
    "kind",
    ["uniform noise", "gaussian noise", "smooth blobs", "binary blobs", "constant", "pixel-shuffled digits",
     "block speckle"],
)  # fmt: skip
@pytest.mark.parametrize("seed", [0, 1])
def test_garbage_is_not_recognizable(recognizer, held, kind, seed):
    assert rec(recognizer, garbage(kind, held[0], seed)) <= 0.05  # 0.000 measured for every case (recognizer-v2)


def test_an_undertrained_dits_speckle_is_not_recognizable(recognizer):
    import numpy as np

    images = torch.from_numpy(np.load(UNDERTRAINED_DIT)).float().div(127.5).sub(1).unsqueeze(1)  # (100, 1, 28, 28)
    assert rec(recognizer, images) <= 0.05  # 0.010 measured (0.02 of the run's 200 samples, 100 not in this file)


def test_half_digits_half_noise_scores_about_half(recognizer, held):
    mix = torch.cat([held[0][:250], garbage("uniform noise", held[0], 0)[:250]])
    assert abs(rec(recognizer, mix) - 0.5) <= 0.1  # 0.488 measured


@pytest.mark.slow  # about 20 s here: 64 samples x 10 steps of an untrained U-Net on a shared CPU
def test_samples_of_a_model_trained_for_one_step_are_not_recognizable(mnist_5k, recognizer, tmp_path):
    from harness.evaluation.evaluate import Evaluator
    from harness.training.train import train

    config = build_config(
        {
            "model": {"channels": 8, "channel_mult": [1, 2], "attention_resolutions": [], "conditional": True},
            "train": {
                "steps": 1,
                "batch_size": 16,
                "device": "cpu",
                "precision": "fp32",
                "memory_format": "contiguous",
            },
            "eval": {"num_samples": 64, "batch_size": 64, "samplers": [{"sampler": "ddim", "steps": 10}]},
        }
    )
    evaluator = Evaluator(config, mnist_5k)
    samples = []

    class Sampling:  # the real evaluator's sampler, without the FID it would also compute
        classifier_accuracy = None

        def run(self, model, *, step, tracker):
            images = evaluator.generate(model, config.eval.samplers[0]).images
            samples.append(images)
            setting = config.eval.samplers[0]
            return [EvalResult(step, setting, {"recognizability": rec(recognizer, images)})]

    result = train(config, None, run_dir=tmp_path, data=mnist_5k, evaluator=Sampling(), progress=False)
    assert result.steps == 1 and samples[-1].shape == (64, 1, 28, 28)
    assert rec(recognizer, samples[-1]) <= 0.05  # 0.0 measured
    assert result.recognizable_at_step is None


def test_recognizable_needs_a_named_class_not_the_reject_class():
    probs = torch.tensor(
        [
            [0.95, 0.03, 0.02],  # confident, class 0
            [0.90, 0.05, 0.05],  # exactly at the threshold counts
            [0.40, 0.35, 0.25],  # unsure
            [0.01, 0.01, 0.98],  # confident that it is no digit: the reject class (last column)
            [0.00, 0.99, 0.01],  # confident, class 1
        ]
    )
    assert recognizable(probs).tolist() == [True, True, False, False, True]
    assert recognizability(probs) == pytest.approx(0.6)
    assert recognizability(probs, threshold=0.96) == pytest.approx(0.2)
    labels = torch.tensor([0, 1, 0, 0, 1])  # the second sample is recognized as a 0, not the 1 asked for
    assert recognized_class_accuracy(probs, labels) == pytest.approx(2 / 3)
    assert math.isnan(recognized_class_accuracy(probs[2:4], labels[2:4]))  # nothing recognizable
    with pytest.raises(ValueError):
        recognizability(torch.empty(0, 3))
    with pytest.raises(ValueError):
        recognizability(torch.ones(4, 1))  # no reject column
    with pytest.raises(ValueError):
        recognized_class_accuracy(probs, labels[:2])


def test_recognizer_is_cached_apart_from_the_fid_classifier(mnist_5k, recognizer):
    plain = domain_classifier(mnist_5k, Path(os.environ["HARNESS_CACHE_DIR"]) / "classifiers")
    assert recognizer.net.head.out_features == mnist_5k.num_classes + 1
    assert plain.net.head.out_features == mnist_5k.num_classes
    assert recognizer.fingerprint != plain.fingerprint
    assert recognizer.accuracy >= 0.96  # digits, held out: 0.984 measured
