"""Numbers and comparisons in words: how a value, an interval, a test and a verdict read in a report.

The sentence rules (who may be called a winner, what "not tested" means) live here once; ``answers``
builds the answers to a spec's question from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.config.schema import METRICS, RUN_METRICS, lower_is_better

from .stats import ZERO_VARIANCE, Comparison, estimate

NO_DIFFERENCE = "no significant difference at this budget"
LOWER_IS_BETTER = {
    m: lower_is_better(m)
    for m in (*METRICS, *RUN_METRICS)
    if (METRICS.get(m) or RUN_METRICS[m]).lower_is_better is not None
}
# Metrics reported in another unit, e.g. {"kid": 1e3} for InceptionV3 KIDs of order 1e-3. None here: KID in
# the domain classifier's 128-D features (unnormalized ReLU activations) is of order 1-100 as measured, so
# it reads best unscaled; the report states its scale instead (report.setup_section).
SCALE: dict[str, float] = {}


def metric_label(metric: str) -> str:
    """How a column or sentence names ``metric``: 'FID', 'KID', 'final training loss'."""
    m = METRICS.get(metric) or RUN_METRICS.get(metric)
    text = m.text if m else metric
    return f"{text} x 10^{round(math.log10(SCALE[metric]))}" if metric in SCALE else text


def scaled(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every scaled metric (SCALE) in its reported unit."""
    return df.assign(**{m: df[m] * f for m, f in SCALE.items() if m in df})


# -- numbers ----------------------------------------------------------------------------------------


def num(x: float) -> str:
    """A number as a reader wants it: 7,426 / 51.3 / 3.14 / 0.988."""
    if x is None or not math.isfinite(x):
        return "n/a"
    a = abs(x)
    if x == round(x) and a < 1e15:  # counts (NFE, steps) and exact integers read best without decimals
        return f"{int(round(x)):,}"
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def pval(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}" if p < 0.01 else f"p = {p:.2f}"


def seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def with_ci(mean: float, low: float, high: float) -> str:
    return f"{num(mean)} (95% CI {num(low)} to {num(high)})" if math.isfinite(low) else num(mean)


def usable_seeds(df: pd.DataFrame, metric: str, by: str, group) -> int:
    """Seeds of ``group`` with a finite ``metric``: a NaN row is no observation."""
    return int(df.loc[(df[by] == group) & df[metric].notna(), "seed"].nunique())


# -- comparisons in words ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Gain:
    """How much better ``a`` is than ``b`` (positive: a is better), with its interval."""

    mean: float
    low: float
    high: float


def gain(c: Comparison) -> Gain:
    if c.lower_is_better:  # better = lower: the gain of a is b - a = -(a - b)
        return Gain(-c.diff.mean, -c.diff.high, -c.diff.low)
    return Gain(c.diff.mean, c.diff.low, c.diff.high)


def margin_of_b(c: Comparison, unit: str, family: int = 1) -> str:
    """How much better ``b`` is than ``a``: '3.1 FID (95% CI 1.2 to 5.0, 3 seeds, paired t-test p = 0.004)'."""
    g = gain(c)
    return f"{num(-g.mean)} {unit} (95% CI {num(-g.high)} to {num(-g.low)}, {test_words(c, family)})"


def swap(c: Comparison) -> Comparison:
    """The same comparison with a and b exchanged."""
    d = c.diff
    return Comparison(
        c.metric,
        c.b,
        c.a,
        c.b_est,
        c.a_est,
        type(d)(d.n, -d.mean, -d.high, -d.low, d.method),
        c.test,
        c.p,
        c.lower_is_better,
        c.alpha,
        c.untested,
    )


def test_words(c: Comparison, family: int = 1) -> str:
    holm = f", Holm-adjusted over {family} comparisons" if family > 1 else ""
    return f"{seeds(c.diff.n)}, {c.test}-test {pval(c.p)}{holm}"


def untested_words(c: Comparison, unit: str) -> str:
    """Why ``c`` has no test: 'not tested (1 seed)', or a constant difference (no uncertainty to estimate)."""
    if c.untested == ZERO_VARIANCE:
        return (
            f"not tested: the difference {c.a} - {c.b} is {num(c.diff.mean)} {unit} in each of {seeds(c.diff.n)}, "
            f"so its uncertainty cannot be estimated"
        )
    return f"not tested ({c.untested})"


def comparison_sentence(c: Comparison, unit: str, family: int = 1) -> str:
    """One comparison: a winner with its margin, a tested tie, or the values without a test and why."""
    if c.test == "none":
        return f"{c.a} {num(c.a_est.mean)} and {c.b} {num(c.b_est.mean)} {unit}: {untested_words(c, unit)}"
    if c.winner == c.a:
        return f"{c.a} beats {c.b} by {margin_of_b(swap(c), unit, family)}"
    if c.winner == c.b:
        return f"{c.b} beats {c.a} by {margin_of_b(c, unit, family)}"
    return (
        f"{NO_DIFFERENCE} between {c.a} ({unit} {with_ci(c.a_est.mean, c.a_est.low, c.a_est.high)}) and {c.b} "
        f"({with_ci(c.b_est.mean, c.b_est.low, c.b_est.high)}); difference "
        f"{with_ci(c.diff.mean, c.diff.low, c.diff.high)} ({test_words(c, family)})"
    )


def ranked(df: pd.DataFrame, metric: str, by: str, groups: list[str]) -> list[str]:
    """Groups with a finite mean, from best to worst (ties keep the given order)."""
    means = {g: estimate(df.loc[df[by] == g, metric]).mean for g in groups}
    means = {g: m for g, m in means.items() if math.isfinite(m)}
    sign = 1 if LOWER_IS_BETTER.get(metric, True) else -1
    return sorted(means, key=lambda g: sign * means[g])


def and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""
