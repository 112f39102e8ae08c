"""Numbers and comparisons in words: how a value, an interval, a test and a verdict read in a report.

The sentence rules (who may be called a winner, what "not tested" means) live here once; ``answers``
builds the answers to a spec's question from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd

from harness.config.schema import METRICS, RUN_METRICS, lower_is_better

from .stats import ZERO_VARIANCE, Comparison, estimate

NO_DIFFERENCE = "no significant difference at this budget"
LOWER_IS_BETTER = {
    m: lower_is_better(m)
    for m in (*METRICS, *RUN_METRICS)
    if (METRICS.get(m) or RUN_METRICS[m]).lower_is_better is not None
}
THRESHOLDS = (0.1, 0.05, 0.01, 0.001)  # a p printed as one of these must be that p


def metric_label(metric: str) -> str:
    """How a column or sentence names ``metric``: 'FID', 'KID', 'final training loss'."""
    m = METRICS.get(metric) or RUN_METRICS.get(metric)
    return m.text if m else metric


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
    """'p = 0.0061', with the digits it takes never to print a threshold that p is not: 0.0495 and 0.0505
    are 'p = 0.0495' and 'p = 0.0505', never both 'p = 0.05'."""
    if p < 0.001:
        return "p < 0.001"
    for digits in range(2, 7):
        text = f"{p:.{digits}g}"
        if float(text) not in THRESHOLDS or float(text) == p:
            return f"p = {text}"
    return f"p = {p:.6g}"


def seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def with_ci(mean: float, low: float, high: float, level: float = 0.95) -> str:
    return f"{num(mean)} ({ci_name(level)} {num(low)} to {num(high)})" if math.isfinite(low) else num(mean)


def ci_name(level: float) -> str:
    """'95% CI', or '98.3% CI' for an interval widened to match an adjusted p."""
    pct = f"{100 * level:.3g}"
    return f"{pct}% CI"


def estimate_words(e) -> str:
    """A mean in words: with its interval, 'identical in all 3 seeds' (zero variance) or 'one seed'."""
    if e.method == ZERO_VARIANCE:
        return f"{num(e.mean)} (identical in all {e.n} seeds)"
    if e.method == "single seed":
        return f"{num(e.mean)} (1 seed)"
    return with_ci(e.mean, e.low, e.high, e.level)


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
    return f"{num(-g.mean)} {unit} ({ci_name(c.diff.level)} {num(-g.high)} to {num(-g.low)}, {test_words(c, family)})"


def swap(c: Comparison) -> Comparison:
    """The same comparison with a and b exchanged."""
    d = c.diff
    return Comparison(
        c.metric,
        c.b,
        c.a,
        c.b_est,
        c.a_est,
        replace(d, mean=-d.mean, low=-d.high, high=-d.low),
        c.test,
        c.p,
        c.lower_is_better,
        c.alpha,
        c.untested,
        c.p_raw,
        c.family,
    )


def test_words(c: Comparison, family: int = 1) -> str:
    family = max(family, c.family)
    holm = f", Holm-adjusted over {family} comparisons" if family > 1 else ""
    n = (
        f"{seeds(c.a_est.n)} of {c.a}, {c.b_est.n} of {c.b}"
        if c.test.startswith("Welch") or c.a_est.n != c.b_est.n
        else seeds(c.diff.n)
    )
    return f"{n}, {c.test}{'-test' if c.test.endswith(' t') else ''} {pval(c.p)}{holm}"


def untested_words(c: Comparison, unit: str) -> str:
    """Why ``c`` has no test: 'not tested (1 seed)', or a constant difference (no uncertainty to estimate)."""
    if c.untested == ZERO_VARIANCE:
        return (
            f"not tested: identical in every seed (difference {c.a} - {c.b} = {num(c.diff.mean)} {unit} in each of "
            f"{seeds(c.diff.n)}, up to rounding), so its uncertainty cannot be estimated"
        )
    return f"not tested ({c.untested})"


def comparison_sentence(c: Comparison, unit: str, family: int = 1) -> str:
    """One comparison: a winner with its margin, a tested tie, or the values without a test and why."""
    if c.test == "none":
        return f"{c.a} {estimate_words(c.a_est)} and {c.b} {estimate_words(c.b_est)} {unit}: {untested_words(c, unit)}"
    if c.winner == c.a:
        return f"{c.a} beats {c.b} by {margin_of_b(swap(c), unit, family)}"
    if c.winner == c.b:
        return f"{c.b} beats {c.a} by {margin_of_b(c, unit, family)}"
    return (
        f"{NO_DIFFERENCE} between {c.a} ({unit} {estimate_words(c.a_est)}) and {c.b} "
        f"({estimate_words(c.b_est)}); difference "
        f"{with_ci(c.diff.mean, c.diff.low, c.diff.high, c.diff.level)} ({test_words(c, family)}"
        + (
            "; the interval adds the FID's own sampling noise at this N, which the seeds' test leaves out"
            if c.p < c.alpha
            else ""
        )
        + "); "
        + worst_case(c, unit)
    )


def worst_case(c: Comparison, unit: str) -> str:
    """What a non-significant interval still allows, both ways: absence of evidence is not equivalence."""
    g = gain(c)  # a's gain over b: a can be worse by up to -g.low, b worse by up to g.high
    parts = [f"{x} to be up to {num(w)} {unit} worse" for x, w in ((c.a, -g.low), (c.b, g.high)) if w > 0]
    return "the data allow " + " or ".join(parts) if parts else "the interval is empty"


def ranked(df: pd.DataFrame, metric: str, by: str, groups: list[str]) -> list[str]:
    """Groups with a finite mean, from best to worst (ties keep the given order)."""
    means = {g: estimate(df.loc[df[by] == g, metric]).mean for g in groups}
    means = {g: m for g, m in means.items() if math.isfinite(m)}
    sign = 1 if LOWER_IS_BETTER.get(metric, True) else -1
    return sorted(means, key=lambda g: sign * means[g])


def and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""
