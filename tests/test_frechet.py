"""FID's companions on data where the answer is known: two Gaussians with a closed-form Frechet distance,
and a reference scored against held-out parts of itself; the file lock of things made once."""

import threading

import numpy as np
import pytest

from harness.evaluation.frechet import Gaussian, fid_floor, fid_inf, fid_se, frechet_distance
from harness.once import made_once

D = 32


def _pair(seed: int = 0):
    """Two Gaussians in D dimensions with diagonal covariances: FD = |mu_a - mu_b|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(seed)
    mu_a, mu_b = np.zeros(D), np.full(D, 0.5)
    var_a, var_b = rng.uniform(0.5, 2.0, D), rng.uniform(0.5, 2.0, D)
    true = float(((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum())
    return (mu_a, var_a), (mu_b, var_b), true


def _draw(rng, mu_var, n):
    mu, var = mu_var
    return mu + rng.standard_normal((n, D)) * np.sqrt(var)


def test_frechet_distance_is_the_closed_form_and_torch_fidelitys():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    (mu_a, var_a), (mu_b, var_b), true = _pair()
    a, b = Gaussian(mu_a, np.diag(var_a)), Gaussian(mu_b, np.diag(var_b))
    assert frechet_distance(a, b) == pytest.approx(true, rel=1e-10)
    assert frechet_distance(b, b) == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((300, D)) @ rng.standard_normal((D, D)), rng.standard_normal((500, D)) + 0.2
    theirs = fid_statistics_to_metric(vars(Gaussian.of(x)), vars(Gaussian.of(y)), False)
    assert frechet_distance(Gaussian.of(x), Gaussian.of(y)) == pytest.approx(
        theirs["frechet_inception_distance"], rel=1e-9
    )


def test_fid_inf_removes_the_small_n_bias_of_two_gaussians():
    """FID at N = 4 D is biased upward by about a quarter of the true distance; FID_inf of the same samples
    is much closer to it; below N = 4 D there is no FID_inf."""
    a, b, true = _pair()
    reference = Gaussian(b[0], np.diag(b[1]))  # the exact distribution, so only the sample's bias is left
    plain, extrapolated = [], []
    for seed in range(8):
        x = _draw(np.random.default_rng(10 + seed), a, 4 * D)
        plain.append(frechet_distance(Gaussian.of(x), reference))
        extrapolated.append(fid_inf(x, reference, seed=seed))
    # measured: true 11.62, FID_128 14.29, FID_inf 11.09 (sd 1.0 over the 8 samples)
    assert np.mean(plain) > true + 2
    assert abs(np.mean(extrapolated) - true) < 0.3 * (np.mean(plain) - true)
    assert fid_inf(_draw(np.random.default_rng(0), a, 4 * D - 1), reference) is None


def test_bootstrap_se_matches_the_spread_of_fid_over_independent_samples():
    a, b, _ = _pair()
    rng = np.random.default_rng(3)
    reference = Gaussian.of(_draw(rng, b, 50_000))
    fids = [frechet_distance(Gaussian.of(_draw(rng, a, 200)), reference) for _ in range(200)]
    ses = [fid_se(_draw(rng, a, 200), reference, seed=s) for s in range(8)]
    # measured: spread 0.82, bootstrap 0.86
    assert np.mean(ses) == pytest.approx(np.std(fids, ddof=1), rel=0.3)


def test_floor_of_a_gaussian_reference_falls_like_one_over_n_and_is_keyed_by_seed():
    rng = np.random.default_rng(4)
    reference = rng.standard_normal((5000, D))
    floors = {n: fid_floor(reference, n, seed=7) for n in (100, 200, 400, 800)}
    # Standard normal features: E FID = (D + D (D + 1) / 4) (1 / n + 1 / (M - n)) to first order
    for n, f in floors.items():
        assert f == pytest.approx((D + D * (D + 1) / 4) * (1 / n + 1 / (5000 - n)), rel=0.1)
    assert floors[100] > 1.8 * floors[200] > 3.2 * floors[400]
    assert fid_floor(reference, 200, seed=7) == floors[200]
    assert fid_floor(reference, 2501, seed=7) is None and fid_floor(reference, 1, seed=7) is None


def test_made_once_makes_a_file_once_while_racing_threads_wait(tmp_path, capsys):
    path, made = tmp_path / "thing.txt", []
    start = threading.Barrier(4)

    def make():
        made.append(1)
        path.write_text("made")
        return "made"

    def worker(out):
        start.wait()
        out.append(made_once(path, lambda p: p.read_text(), make, what="thing", why="needed", estimate=lambda: 90))

    out = []
    threads = [threading.Thread(target=worker, args=(out,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made == [1] and out == ["made"] * 4
    said = capsys.readouterr().out
    assert said.count("thing: needed; made once, then cached in") == 1 and "about 1m30s on this machine" in said
    path.write_text("")  # unreadable: made again, with one warning line
    made_once(path, lambda p: int(p.read_text()), make, what="thing", why="needed", progress=False)
    assert capsys.readouterr().err.splitlines() == [
        f"warning: making the thing again: cannot read {path} (invalid literal for int() with base 10: '')"
    ]
    assert made == [1, 1]
