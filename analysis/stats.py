"""Statistics over seeds: means with 95% intervals, paired or Welch comparisons, Pareto fronts.

Seeds are the unit of replication: a trained model is one observation, and only a seed with a finite
value counts (a NaN FID is no observation). Every interval is the t-interval that belongs to the test
it is reported with (paired: the one-sample t-interval of the per-seed differences; independent:
Welch's), so "the interval excludes 0" and "p < 0.05" agree by construction. Without a test
(``Comparison.test == "none"``) ``Comparison.untested`` says why: fewer than 2 usable seeds, or
differences identical in every seed (zero variance), where the uncertainty cannot be estimated and
a p-value of 0 would be a fiction. "Identical" is decided with a tolerance relative to the values
(``flat``): differences like 0.01 +- 1e-17 (recognizabilities in multiples of 1/200) are constant up to
rounding, and a t-test on rounding noise would print "p < 0.001" for a difference nobody measured.
A winner needs a test, p < alpha after adjustment and an interval that excludes zero, so a tie or an
untested comparison is never reported as a win. An interval printed beside an adjusted p is at the
level that matches it (``at_level``): it excludes 0 exactly when the adjusted p < alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats as sps

CONFIDENCE = 0.95
ALPHA = 0.05
ZERO_VARIANCE = "zero variance"
RELATIVE_TOLERANCE = 1e-9  # spread below this fraction of the values' magnitude is rounding, not variance
# The possible range of each metric, so that an interval never leaves it (class accuracy up to 1.12, a negative
# FID). KID's unbiased estimator can be negative, so it has no bound; a metric not named here is unbounded.
BOUNDS: dict[str, tuple[float, float]] = {
    **{
        m: (0.0, 1.0) for m in ("precision", "recall", "recognizability", "class_accuracy", "recognized_class_accuracy")
    },
    **{m: (0.0, math.inf) for m in ("fid", "fid_inception", "final_loss", "nfe", "sample_seconds")},
}


def flat(*groups, scale=None) -> bool:
    """Whether every group is constant up to rounding: spread <= RELATIVE_TOLERANCE * max(|values|, 1).
    ``scale``: the values the groups were computed from (for differences, the two arms' values)."""
    ref = [np.abs(np.asarray(g, dtype=float)) for g in (scale if scale is not None else groups)]
    size = max([1.0, *(float(r.max()) for r in ref if r.size)])
    return all(np.ptp(np.asarray(g, dtype=float)) <= RELATIVE_TOLERANCE * size for g in groups if len(g))


@dataclass(frozen=True)
class Estimate:
    """Mean of ``n`` values with its interval (nan bounds when n < 2)."""

    n: int
    mean: float
    low: float
    high: float
    method: str  # "t" | "zero variance" (all values equal) | "single seed" | "none" (no values)
    se: float = math.nan  # standard error of the mean, and the t's degrees of freedom: intervals at any level
    dof: float = math.nan
    level: float = CONFIDENCE  # of [low, high]
    arms: int = 0  # > 0: a Tukey pair among that many arms (critical value of the studentized range, not t)

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low)


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` on one metric; ``diff`` estimates mean(a) - mean(b) (paired: mean of a_s - b_s)."""

    metric: str
    a: str
    b: str
    a_est: Estimate
    b_est: Estimate
    diff: Estimate
    test: str  # "paired t" | "Welch t" | "none"
    p: float  # nan without a test; Holm-adjusted when part of a family (see compare_to_reference)
    lower_is_better: bool
    alpha: float = ALPHA
    untested: str = ""  # why there is no test: "1 seed", "0 seeds", ZERO_VARIANCE; "" with a test
    p_raw: float = math.nan  # the unadjusted p (``p`` is adjusted once the comparison joins a family)
    family: int = 1  # how many comparisons ``p`` is adjusted over

    @property
    def significant(self) -> bool:
        excludes_zero = self.diff.has_interval and (self.diff.low > 0 or self.diff.high < 0)
        return self.test != "none" and self.p < self.alpha and excludes_zero

    @property
    def winner(self) -> str | None:
        """The better arm when the difference is significant, else None (a tie or too few seeds)."""
        if not self.significant:
            return None
        a_lower = self.diff.mean < 0
        return self.a if a_lower == self.lower_is_better else self.b

    @property
    def margin(self) -> float:
        """How much better the winner is, in the metric's units (positive), nan without a winner."""
        return abs(self.diff.mean) if self.winner else float("nan")


def estimate(values, *, confidence: float = CONFIDENCE) -> Estimate:
    """Mean of the finite ``values`` (one per seed) and its Student t-interval."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Estimate(0, float("nan"), float("nan"), float("nan"), "none")
    mean = float(x.mean())
    if n == 1:
        return Estimate(1, mean, float("nan"), float("nan"), "single seed")
    if flat(x):  # s = 0 up to rounding: a zero-width interval would claim certainty that n seeds cannot give
        return Estimate(n, mean, float("nan"), float("nan"), ZERO_VARIANCE)
    se = float(x.std(ddof=1) / math.sqrt(n))
    return at_level(Estimate(n, mean, math.nan, math.nan, "t", se, n - 1.0), confidence)


def metric_estimate(values, metric: str) -> Estimate:
    """``estimate`` of a metric's values, its interval clipped to the metric's range (a FID is never negative,
    an accuracy never above 1: with 2 seeds a t-interval easily reaches past either)."""
    return at_level(estimate(values), CONFIDENCE, metric_bounds(metric))


def at_level(e: Estimate, level: float, bounds: tuple[float, float] = (-math.inf, math.inf)) -> Estimate:
    """``e`` with its t-interval at ``level`` (on its own se and dof), clipped to ``bounds``."""
    if not (e.method == "t" and math.isfinite(e.se)):
        return e
    if e.arms:  # |t| * sqrt(2) is the studentized range of the pair
        q = range_critical(level, e.arms, e.dof)
        low, high = e.mean - q * e.se, e.mean + q * e.se
    else:
        low, high = sps.t.interval(level, e.dof, loc=e.mean, scale=e.se) if e.se > 0 else (e.mean, e.mean)
    return replace(e, low=max(float(low), bounds[0]), high=min(float(high), bounds[1]), level=level)


@lru_cache(maxsize=1024)
def range_critical(level: float, arms: int, dof: float) -> float:
    """|t| of a pair at the ``level`` quantile of the studentized range of ``arms`` means (Tukey), cached:
    scipy integrates it numerically, ~0.1 s a call."""
    return float(sps.studentized_range.ppf(level, arms, dof) / math.sqrt(2))


def metric_bounds(metric: str) -> tuple[float, float]:
    return BOUNDS.get(metric, (-math.inf, math.inf))


def diff_bounds(metric: str) -> tuple[float, float]:
    """The range of a difference of two values of ``metric``: [lo - hi, hi - lo]."""
    lo, hi = metric_bounds(metric)
    return lo - hi, hi - lo


def compare(
    df: pd.DataFrame, metric: str, a: str, b: str, *, by: str = "arm_label", lower_is_better: bool, alpha: float = ALPHA
) -> Comparison:
    """Compare groups ``a`` and ``b`` of column ``by`` on ``metric``; ``df`` has one row per (group, seed).

    Same usable seeds in both groups (at least 2): a paired t-test on the per-seed differences, which
    removes the seed's share of the variance. Otherwise, with at least 2 usable seeds each: Welch's
    t-test. Fewer, or no variance at all: no test, and ``untested`` says why.
    """
    xa = _by_seed(df, metric, by, a)
    xb = _by_seed(df, metric, by, b)
    ea, eb = (metric_estimate(x, metric) for x in (xa, xb))
    if set(xa.index) == set(xb.index) and len(xa) >= 2:
        (diff, p), test = _paired(xa.to_numpy(), xb.reindex(xa.index).to_numpy()), "paired t"
    elif len(xa) >= 2 and len(xb) >= 2:
        (diff, p), test = _welch(xa.to_numpy(), xb.to_numpy()), "Welch t"
    else:
        n = min(len(xa), len(xb))
        diff = Estimate(n, ea.mean - eb.mean, math.nan, math.nan, "single seed" if n else "none")
        return Comparison(metric, a, b, ea, eb, diff, "none", math.nan, lower_is_better, alpha, seeds_word(n))
    if diff.method == ZERO_VARIANCE:
        return Comparison(metric, a, b, ea, eb, diff, "none", math.nan, lower_is_better, alpha, ZERO_VARIANCE)
    diff = at_level(diff, CONFIDENCE, diff_bounds(metric))
    return Comparison(metric, a, b, ea, eb, diff, test, p, lower_is_better, alpha, p_raw=p)


def adjusted(c: Comparison, p_adjusted: float, family: int) -> Comparison:
    """``c`` with its adjusted p and the interval that matches it: at level 1 - alpha * p_raw / p_adjusted,
    which excludes 0 exactly when p_adjusted < alpha (each t-interval at level 1 - g excludes 0 iff p < g)."""
    if c.test == "none" or not math.isfinite(c.p_raw):
        return replace(c, family=family)
    level = 1 - c.alpha * c.p_raw / p_adjusted if p_adjusted > 0 else CONFIDENCE
    diff = at_level(c.diff, max(level, CONFIDENCE), diff_bounds(c.metric))
    return replace(c, p=p_adjusted, diff=diff, family=family)


def seeds_word(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def compare_to_reference(
    df: pd.DataFrame,
    metric: str,
    reference: str,
    others: list[str],
    *,
    by: str = "arm_label",
    lower_is_better: bool,
    alpha: float = ALPHA,
) -> list[Comparison]:
    """Each of ``others`` against ``reference``, p-values Holm-adjusted over the family (k comparisons
    at alpha would otherwise find a false winner with probability up to k * alpha)."""
    comps = [compare(df, metric, o, reference, by=by, lower_is_better=lower_is_better, alpha=alpha) for o in others]
    return holm_family(comps)


def holm_family(comps: list[Comparison]) -> list[Comparison]:
    """Holm over ``comps`` (their raw p), each with the interval that matches its adjusted p."""
    n = sum(math.isfinite(c.p_raw) for c in comps)
    return [adjusted(c, p, n) for c, p in zip(comps, holm([c.p_raw for c in comps]))]


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (nan stays nan and does not count towards the family)."""
    idx = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    out = [float("nan")] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (len(idx) - rank) * p_values[i]))
        out[i] = running
    return out


def _by_seed(df: pd.DataFrame, metric: str, by: str, group: str) -> pd.Series:
    rows = df[(df[by] == group) & df[metric].notna()]
    return rows.groupby("seed")[metric].mean().sort_index()  # one value per seed


def _tested(test, mean: float, n: int, is_flat: bool, se: float) -> tuple[Estimate, float]:
    """The 95% interval and p of one scipy t-test (``test()``, with its own ``confidence_interval`` and
    ``df``): one t, so "p < 0.05" and "the interval excludes 0" cannot disagree. ``is_flat``: neither exists."""
    if is_flat:
        return Estimate(n, mean, math.nan, math.nan, ZERO_VARIANCE), math.nan
    result = test()
    ci = result.confidence_interval(CONFIDENCE)
    return Estimate(n, mean, float(ci.low), float(ci.high), "t", se, float(result.df)), float(result.pvalue)


def _paired(xa: np.ndarray, xb: np.ndarray) -> tuple[Estimate, float]:
    """Paired t on the per-seed differences d_s = a_s - b_s (scipy.stats.ttest_rel)."""
    d = xa - xb
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    return _tested(lambda: sps.ttest_rel(xa, xb), float(d.mean()), len(d), flat(d, scale=(xa, xb)), se)


def _welch(xa: np.ndarray, xb: np.ndarray) -> tuple[Estimate, float]:
    """Welch's t for independent groups, Welch-Satterthwaite degrees of freedom (scipy.stats.ttest_ind,
    equal_var=False). ``n`` is the smaller group; the words name both (``Comparison.a_est.n``, ``b_est.n``)."""
    se = math.sqrt(xa.var(ddof=1) / len(xa) + xb.var(ddof=1) / len(xb))
    test = lambda: sps.ttest_ind(xa, xb, equal_var=False)  # noqa: E731
    return _tested(test, float(xa.mean() - xb.mean()), min(len(xa), len(xb)), flat(xa, xb), se)


def summarize(df: pd.DataFrame, metric: str, by: list[str]) -> pd.DataFrame:
    """One row per group: n, mean, low, high, method of ``metric`` over seeds (first averaging within a seed)."""
    rows = []
    per_seed = df[df[metric].notna()].groupby([*by, "seed"], sort=False)[metric].mean().reset_index()
    for key, group in per_seed.groupby(by, sort=False):
        e = metric_estimate(group[metric], metric)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "n": e.n, "mean": e.mean, "low": e.low, "high": e.high, "method": e.method})
    return pd.DataFrame(rows, columns=[*by, "n", "mean", "low", "high", "method"])


def band(df: pd.DataFrame, x: str, y: str, by: str) -> pd.DataFrame:
    """Mean and 95% t-interval of ``y`` over seeds at each (``by``, ``x``), vectorized for long curves.

    Columns: by, x, n, mean, low, high (low = high = mean with one seed, so a band is simply not drawn).
    """
    g = df.groupby([by, x], sort=False)[y]
    out = g.agg(n="count", mean="mean", sd="std").reset_index()
    sem = np.where(out["n"] >= 2, out["sd"].fillna(0) / np.sqrt(out["n"]), 0.0)
    low, high = sps.t.interval(
        CONFIDENCE, np.maximum(out["n"] - 1, 1), loc=out["mean"], scale=np.where(sem > 0, sem, 1)
    )
    out["low"], out["high"] = np.where(sem > 0, low, out["mean"]), np.where(sem > 0, high, out["mean"])
    return out.drop(columns="sd")


def pareto_front(df: pd.DataFrame, *, minimize: tuple[str, ...] = (), maximize: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows of ``df`` not dominated by another row (at least as good everywhere, better somewhere)."""
    cols = list(minimize) + list(maximize)
    v = (
        np.column_stack([df[c].to_numpy(float) for c in minimize] + [-df[c].to_numpy(float) for c in maximize])
        if cols
        else np.empty((len(df), 0))
    )
    keep = [
        not any(np.all(v[j] <= v[i]) and np.any(v[j] < v[i]) for j in range(len(v)) if j != i) for i in range(len(v))
    ]
    return df[np.asarray(keep, dtype=bool)] if len(df) else df
