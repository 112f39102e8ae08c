"""FID from features: the one Frechet distance every FID of the harness is computed with, and the three
numbers that say how far an FID at N samples can be trusted.

FID at N is biased upwards by about k / N, and k depends on the model (Chong & Forsyth 2020, "Effectively
Unbiased FID and Inception Score and where to find them"), so equal N does not cancel the bias. Beside
each FID the harness therefore logs:

- ``fid_inf``: FID_N = FID_inf + k / N fitted by least squares to FIDs of random subsets of the same
  generated features at several sizes n in [max(N/4, 2 D), N], extrapolated to 1/N = 0 (Chong & Forsyth,
  sec. 3.1). The 1/n law holds only for subsets well above the feature dimension D: in D = 128, subsets
  of 100 (N = 400, n from N/4) gave FID_inf 10.6 for a true 20.1 (two Gaussians; tests/test_frechet.py).
  So the smallest subset is 2 D, and below N = 4 D (512 in the domain classifier's 128 dimensions) there
  is no FID_inf;
- ``fid_se``: the bootstrap standard error of the FID over the generated samples (resampled with
  replacement), the metric's own sampling variance, to be added to the variance over seeds;
- ``fid_floor``: the FID of N held-out real images, the value a perfect model would get at this N.

The held-out split of the floor: the reference's own images cannot be scored against statistics they are
part of (the overlap pulls the FID down). So for each of ``FLOOR_DRAWS`` random splits, n images are held
out and scored against the statistics of the other M - n, and the floor is the mean. The splits are drawn
from a seed made of the reference's content hash: the same reference always gets the same floor. Its
reference holds M - n images instead of M. If the bias is c (1/n + 1/M), as for Gaussian features to
first order, that adds c n / (M (M - n)), a fraction n^2 / (M (M - n)) of the sample-side c / n: under 1%
for n = 400 of mnist-5k's 5,000, 50% at n = M / 2. Without at least as many images left as held out
(n > M / 2), there is no floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import stats

FIT_SIZES = 5  # subset sizes n of the FID_inf fit, evenly spaced in 1/n between max(N/4, 2 D) and N
FIT_MIN_PER_DIM = 2  # the smallest subset holds this many samples per feature dimension
FIT_DRAWS = 4  # random subsets per size below N (at N the subset is the whole set)
BOOTSTRAP = 50  # resamples of the bootstrap standard error
FLOOR_DRAWS = 3  # held-out splits the floor is averaged over


@dataclass(frozen=True)
class Gaussian:
    """The mean (D,) and covariance (D, D) fitted to features, in float64."""

    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def of(cls, features) -> Gaussian:
        f = np.asarray(features, dtype=np.float64)  # (N, D)
        return cls(f.mean(axis=0), np.cov(f, rowvar=False))  # unbiased (N - 1), as torch-fidelity's

    @cached_property
    def root(self) -> np.ndarray:
        """The symmetric square root S^1/2 (clipping eigenvalues that rounding made negative)."""
        w, v = np.linalg.eigh(self.sigma)
        return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """||mu_a - mu_b||^2 + tr S_a + tr S_b - 2 tr (S_a S_b)^1/2 (Heusel et al. 2017, eq. 6).

    S_a S_b is similar to the symmetric S_b^1/2 S_a S_b^1/2, so the trace of its root is the sum of the
    roots of a symmetric matrix's eigenvalues: real by construction, and 20 times faster in D = 128 than
    the general eigenvalues torch-fidelity takes (equal to its FID up to rounding). Pass the reference as
    ``b``: its root is computed once per Gaussian.
    """
    lam = np.linalg.eigvalsh(b.root @ a.sigma @ b.root)
    d = a.mu - b.mu
    return float(d @ d + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.sqrt(np.clip(lam, 0.0, None)).sum())


def fid_inf(features: np.ndarray, reference: Gaussian, *, seed: int = 0) -> float | None:
    """FID_inf of ``features`` (N, D): the intercept of FID_n = FID_inf + k / n, least squares over subsets;
    None when N < 2 FIT_MIN_PER_DIM D, where no subset range above FIT_MIN_PER_DIM D spans a factor 2."""
    n, smallest = features.shape[0], max(features.shape[0] // 4, FIT_MIN_PER_DIM * features.shape[1])
    if n < 2 * smallest:
        return None
    sizes = np.unique(np.round(1 / np.linspace(1 / smallest, 1 / n, FIT_SIZES)).astype(int))
    rng = np.random.default_rng(seed)
    x, y = [], []
    for m in sizes:
        for _ in range(FIT_DRAWS if m < n else 1):
            x.append(1 / m)
            y.append(frechet_distance(Gaussian.of(features[rng.choice(n, m, replace=False)]), reference))
    return float(stats.linregress(x, y).intercept)


def fid_se(features: np.ndarray, reference: Gaussian, *, seed: int = 0) -> float:
    """Bootstrap standard error of the FID of ``features`` (N, D): N drawn with replacement, BOOTSTRAP times."""
    n = len(features)
    rng = np.random.default_rng(seed)
    fids = [frechet_distance(Gaussian.of(features[rng.integers(0, n, n)]), reference) for _ in range(BOOTSTRAP)]
    return float(np.std(fids, ddof=1))


def fid_floor(reference: np.ndarray, n: int, *, seed: int) -> float | None:
    """Mean FID of n held-out rows of ``reference`` (M, D) against the other M - n (module docstring);
    None when n > M / 2. ``seed``: from the reference's content, so a reference has one floor per n."""
    m = len(reference)
    if not 2 <= n <= m - n:
        return None
    rng = np.random.default_rng(seed)
    fids = []
    for _ in range(FLOOR_DRAWS):
        order = rng.permutation(m)
        held, rest = reference[order[:n]], reference[order[n:]]
        fids.append(frechet_distance(Gaussian.of(held), Gaussian.of(rest)))
    return float(np.mean(fids))
