"""One multiplicity family per question: every pair of arms on every metric the answer talks about.

"Which arm is best" looks at all k arms at once, so picking the best after seeing the data and testing it
against the k - 1 others (Holm) finds a false winner far more often than alpha under the null. Here
every pair of arms is in the family and is judged by Tukey's HSD (the studentized range of k means on a
pooled variance), whose chance of any false "A beats B" under the complete null is exactly alpha; with
the same seeds in every arm the variance is the residual of the additive arm + seed model (seeds are
blocks), else the one-way pooled variance (Tukey-Kramer). Two arms: the paired or Welch t-test of
``stats.compare``, which Tukey's reduces to.

Metrics are sub-families (``holm_groups``): Holm across them on each one's smallest p, and a member's
adjusted p is its own times its sub-family's Holm multiplier, with the matching interval
(``stats.adjusted``), so a printed interval excludes 0 exactly when the adjusted p < alpha.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness.config.schema import lower_is_better

from .stats import (
    ALPHA,
    CONFIDENCE,
    ZERO_VARIANCE,
    Comparison,
    Estimate,
    adjusted,
    at_level,
    compare,
    diff_bounds,
    flat,
    holm,
    metric_estimate,
    range_critical,
)


def seed_matrix(df: pd.DataFrame, metric: str, arms: list[str], by: str = "arm_label") -> pd.DataFrame:
    """Seeds x arms of ``metric`` (mean within a seed), NaN where an arm has no value for that seed."""
    rows = df[df[by].isin(arms) & df[metric].notna()]
    return rows.pivot_table(index="seed", columns=by, values=metric, aggfunc="mean").reindex(columns=arms)


def pooled(m: pd.DataFrame) -> tuple[float, float, bool]:
    """(s, degrees of freedom, blocked): the pooled standard deviation of a seeds x arms matrix. Complete
    (every arm every seed): residual of the additive model, (k - 1)(n - 1) df; else one-way, N - k df."""
    k = m.shape[1]
    if not m.isna().any().any():
        x = m.to_numpy(float)
        res = x - x.mean(0) - x.mean(1, keepdims=True) + x.mean()
        dof = (k - 1) * (x.shape[0] - 1)
        return (math.sqrt((res**2).sum() / dof) if dof else math.nan), float(dof), True
    ss = sum(float(((col.dropna() - col.mean()) ** 2).sum()) for _, col in m.items())
    dof = int(m.notna().sum().sum()) - k
    return (math.sqrt(ss / dof) if dof > 0 else math.nan), float(dof), False


def pair_statistics(x: np.ndarray) -> np.ndarray:
    """|t| of every pair of a complete seeds x arms matrix on the blocked pooled variance (the simulation
    of tests/test_multiplicity.py and ``tukey_pairs`` share it)."""
    n, k = x.shape
    res = x - x.mean(0) - x.mean(1, keepdims=True) + x.mean()
    s = np.sqrt((res**2).sum() / ((k - 1) * (n - 1)))
    means = x.mean(0)
    return np.abs(means[:, None] - means[None, :]) / (s * math.sqrt(2 / n))


def critical(k: int, dof: float, alpha: float = ALPHA) -> float:
    """The |t| above which a pair among k arms is significant at family-wise ``alpha`` (Tukey's HSD)."""
    return range_critical(1 - alpha, k, dof)


def tukey_p(t: float, k: int, dof: float) -> float:
    return float(sps.studentized_range.sf(abs(t) * math.sqrt(2), k, dof))


def tukey_pairs(
    df: pd.DataFrame, metric: str, arms: list[str], *, lower_is_better: bool, by: str = "arm_label"
) -> list[Comparison]:
    """Every pair (a, b) of ``arms`` with 2+ seeds each, a before b in the given order; ``p_raw`` is Tukey's
    adjusted p over the k arms (with 2 arms: the t-test of ``stats.compare``)."""
    arms = [a for a in arms if (df[by] == a).any() and df.loc[df[by] == a, metric].notna().sum() >= 2]
    if len(arms) < 3:
        return [compare(df, metric, a, b, by=by, lower_is_better=lower_is_better) for a, b in _pairs(arms)]
    m = seed_matrix(df, metric, arms, by)
    s, dof, blocked = pooled(m)
    k, out = len(arms), []
    for a, b in _pairs(arms):
        c = compare(df, metric, a, b, by=by, lower_is_better=lower_is_better)
        if c.diff.method == ZERO_VARIANCE or not (math.isfinite(s) and s > 0) or flat(m.to_numpy(float)):
            out.append(c if c.test == "none" else _untested(c))
            continue
        na, nb = m[a].notna().sum(), m[b].notna().sum()
        se = s * math.sqrt(2 / len(m) if blocked else 1 / na + 1 / nb)
        mean = float(m[a].mean() - m[b].mean())
        diff = Estimate(c.diff.n, mean, math.nan, math.nan, "t", se, dof, arms=k)
        p = tukey_p(mean / se, k, dof)
        test = f"Tukey ({'blocked by seed, ' if blocked else ''}{k} arms)"
        out.append(replace(c, diff=at_level(diff, CONFIDENCE, diff_bounds(metric)), test=test, p=p, p_raw=p))
    return out


def all_pairs(df: pd.DataFrame, metric: str, arms: list[str], by: str = "arm_label") -> list[Comparison]:
    """Every pair of ``arms`` (a before b in the given order): Tukey among the arms with 2+ seeds, the rest
    untested with their reason (``stats.compare``)."""
    lower = lower_is_better(metric)
    n = {a: df.loc[(df[by] == a) & df[metric].notna(), "seed"].nunique() for a in arms}
    testable = [a for a in arms if n[a] >= 2]
    tested = {(c.a, c.b): c for c in tukey_pairs(df, metric, testable, lower_is_better=lower, by=by)}
    return [
        tested.get((a, b)) or compare(df, metric, a, b, by=by, lower_is_better=lower)
        for i, a in enumerate(arms)
        for b in arms[i + 1 :]
    ]


def _untested(c: Comparison) -> Comparison:
    return replace(c, test="none", p=math.nan, p_raw=math.nan, untested=ZERO_VARIANCE)


def _pairs(arms: list[str]):
    return itertools.combinations(arms, 2)


def holm_groups(groups: list[list[Comparison]]) -> list[list[Comparison]]:
    """Holm across sub-families on each one's smallest p; a member's p times its sub-family's multiplier."""
    mins = [min((c.p_raw for c in g if math.isfinite(c.p_raw)), default=math.nan) for g in groups]
    adj = holm(mins)
    size = sum(math.isfinite(c.p_raw) for g in groups for c in g)
    out = []
    for g, p_min, p_adj in zip(groups, mins, adj):
        factor = p_adj / p_min if math.isfinite(p_min) and p_min > 0 else 1.0
        out.append([adjusted(c, max(min(1.0, c.p_raw * factor), p_adj), size) for c in g])
    return out


def summary(df: pd.DataFrame, metric: str, group: str, by: str = "arm_label") -> Estimate:
    """One arm's mean with its 95% interval, clipped to the metric's range."""
    return metric_estimate(df.loc[df[by] == group, metric], metric)
