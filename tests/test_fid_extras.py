"""Cost counted as batch rows, FID's floor and FID_inf on real digits against themselves, and the reference
features made once by racing processes."""

import multiprocessing
import os

import numpy as np
import pytest
import torch

from harness.config import Config, SamplerSetting
from harness.evaluation.evaluate import Evaluator, sampling_cost
from harness.evaluation.features import domain_classifier
from harness.evaluation.frechet import Gaussian, fid_floor, fid_inf, frechet_distance
from harness.evaluation.metrics import _content_key, features, reference_features, to_uint8
from harness.training.data import load_dataset

GUIDED = {"model": {"conditional": True}}


@pytest.mark.parametrize(
    "setting, nfe, passes",
    [
        ({"sampler": "ddim", "steps": 10}, 10, 0),
        ({"sampler": "ddim", "steps": 10, "guidance": 2.0}, 20, 0),  # a doubled batch per step
        ({"sampler": "ddpm", "steps": 10, "classifier_scale": 1.0}, 10, 10),  # one pass per guided step
    ],
)
def test_cost_counts_batch_rows_and_classifier_passes(setting, nfe, passes):
    cost = sampling_cost(Config.model_validate(GUIDED), SamplerSetting(**setting))
    assert (cost.nfe, cost.classifier_passes) == (nfe, passes)


def test_evaluation_counts_what_sampling_cost_counts(tmp_path):
    config = Config.model_validate(
        {
            **GUIDED,
            "eval": {
                "num_samples": 5,
                "batch_size": 3,  # an uneven last batch
                "classifier_steps": 2,
                "samplers": [{"sampler": "ddim", "steps": 4, "guidance": 1.0}, {"steps": 3, "classifier_scale": 1.0}],
            },
        }
    )
    evaluator = Evaluator(config, load_dataset("mnist-5k"), progress=False)
    model = lambda x, t, y: torch.zeros_like(x)  # noqa: E731 - the counts do not depend on the network
    for setting in config.eval.samplers:
        assert evaluator.generate(model, setting).cost == sampling_cost(config, setting)


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("mnist-5k")
    clf = domain_classifier(data, os.path.join(os.environ["HARNESS_CACHE_DIR"], "classifiers"))
    return features(to_uint8(data.images), clf).double().numpy(), _content_key(to_uint8(data.images))


def test_real_digits_floor_falls_like_one_over_n_and_their_fid_inf_is_near_zero(digits):
    """Real vs real (mnist-5k in the domain classifier's space): the floor is c (1 / n + 1 / (M - n)) with one
    c, and FID_inf of held-out digits against other digits is near 0 while their plain FID is not."""
    f, content = digits
    m = len(f)
    floors = {n: fid_floor(f, n, seed=int(content, 16)) for n in (200, 400, 800, 1600, 2500)}
    c = [v / (1 / n + 1 / (m - n)) for n, v in floors.items()]  # measured 1,885 1,761 1,687 1,695 1,695
    assert max(c) < 1.25 * min(c) and floors[200] > 5 * floors[2500]
    order = np.random.default_rng(0).permutation(m)
    held, rest = f[order[:1500]], Gaussian.of(f[order[2500:]])
    plain = frechet_distance(Gaussian.of(held), rest)
    assert abs(fid_inf(held, rest)) < 0.5 * plain  # measured 0.02 +- 0.24 against a plain FID of 1.8


def _race(cache, out):
    data = load_dataset("mnist-5k")
    clf = domain_classifier(data, os.path.join(os.environ["HARNESS_CACHE_DIR"], "classifiers"))
    u8 = to_uint8(data.images[:600])
    f = reference_features(u8, clf, cache / "race", progress=True)
    out.put(float(f.sum()))


def test_reference_features_are_made_once_by_racing_processes(tmp_path, capfd):
    load_dataset("mnist-5k")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(tmp_path, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    sums = [out.get(timeout=5) for _ in procs]
    assert sums[0] == sums[1]
    said = capfd.readouterr().out
    assert said.count("reference features race: FID, KID and precision/recall compare samples with") == 1
    assert "600 images; once per data set; made once, then cached in" in said
