"""Design help: what a comparison could have detected, and how many seeds an effect needs.

A two-sided t-test at level alpha with standard error se on dof degrees of freedom rejects a true
difference delta with probability P(|T'| > t_(1 - alpha/2)), T' ~ noncentral t(dof, delta / se)
(``scipy.stats.nct``; the same formula as statsmodels' ``TTestPower``). The minimum detectable effect
(MDE) is the delta at which that power is 80%: "with 3 seeds this design detects FID differences above
14". From a pilot's per-seed standard deviation, ``seeds_needed`` is the smallest seed count whose MDE
reaches a given effect.
"""

from __future__ import annotations

import math

from scipy import integrate, optimize
from scipy import stats as sps

from .stats import ALPHA, Comparison, range_critical

POWER = 0.8


def power_se(delta: float, se: float, dof: float, *, alpha: float = ALPHA, q: float | None = None) -> float:
    """Power of the two-sided t-test at ``alpha`` (or with critical value ``q``) against a true ``delta``."""
    q = sps.t.ppf(1 - alpha / 2, dof) if q is None else q
    nc = delta / se
    power = float(sps.nct.sf(q, dof, nc) + sps.nct.cdf(-q, dof, nc))
    if math.isfinite(power):
        return power

    # nct's series fails far in the tail at few dof: the same probability as one integral over the chi-square
    # of the standard error, T' = (Z + nc) / sqrt(V / dof).
    def tail(v: float) -> float:
        s = q * math.sqrt(v / dof)
        return (sps.norm.sf(s - nc) + sps.norm.cdf(-s - nc)) * sps.chi2.pdf(v, dof)

    return float(integrate.quad(tail, 0, math.inf, limit=200)[0])


def mde_se(se: float, dof: float, *, alpha: float = ALPHA, power: float = POWER, q: float | None = None) -> float:
    """The difference detected with probability ``power`` (nan without a standard error)."""
    if not (math.isfinite(se) and se > 0 and math.isfinite(dof) and dof >= 1):
        return math.nan
    f = lambda d: power_se(d, se, dof, alpha=alpha, q=q) - power  # noqa: E731
    hi = se  # doubled until the power passes (nct's tail is NaN far beyond it)
    while f(hi) < 0 and hi < se * 1e4:
        hi *= 2
    return float(optimize.brentq(f, 0.0, hi, xtol=se * 1e-8))


def design(sd: float, n: int, *, paired: bool = True) -> tuple[float, float]:
    """(se, dof) of the difference of two arms with ``n`` seeds each and per-seed standard deviation ``sd``
    (paired: of the per-seed differences; independent: of each arm's values, equal variances)."""
    return (sd / math.sqrt(n), n - 1.0) if paired else (sd * math.sqrt(2 / n), 2.0 * n - 2)


def mde(sd: float, n: int, *, paired: bool = True, alpha: float = ALPHA, power: float = POWER) -> float:
    """The minimum detectable effect of a design with ``n`` seeds per arm."""
    return mde_se(*design(sd, n, paired=paired), alpha=alpha, power=power)


def seeds_needed(
    effect: float, sd: float, *, paired: bool = True, alpha: float = ALPHA, power: float = POWER, most: int = 10_000
) -> int | None:
    """The fewest seeds per arm that detect ``effect`` with ``power`` (None: more than ``most``)."""
    n = 2
    while n <= most:
        if power_se(abs(effect), *design(sd, n, paired=paired), alpha=alpha) >= power:
            return n
        n = n + 1 if n < 64 else int(n * 1.1)
    return None


def _critical(c: Comparison, dof: float) -> float:
    """The critical value of ``c``'s printed interval at ``dof``: the t's, or Tukey's studentized range over the
    arms, at the level matching its adjusted p."""
    d = c.diff
    return float(range_critical(d.level, d.arms, dof) if d.arms else sps.t.ppf((1 + d.level) / 2, dof))


def comparison_mde(c: Comparison) -> float:
    """The MDE of a tested comparison with the critical value its verdict used."""
    d = c.diff
    if c.test == "none" or not math.isfinite(d.se):
        return math.nan
    return mde_se(d.se, d.dof, q=_critical(c, d.dof))


def comparison_seeds(c: Comparison, effect: float, most: int = 10_000) -> int | None:
    """The fewest seeds per arm at which ``c``'s design, with this pilot's spread, detects ``effect`` with 80%
    power at the level of ``c``'s verdict (that of ``comparison_mde``: an effect below the MDE never needs
    fewer seeds than ``c`` had). None: untested, or more than ``most``."""
    d = c.diff
    if c.test == "none" or not (math.isfinite(d.se) and d.se > 0 and effect > 0):
        return None
    paired = c.test == "paired t"
    n = min(c.a_est.n, c.b_est.n)
    # The pilot's per-seed spread: of a paired difference, or of one arm's values (se = s * sqrt(2 / n)).
    sd = d.se * math.sqrt(n) if paired else d.se * math.sqrt(n / 2)
    k = 2
    while k <= most:
        se, dof = design(sd, k, paired=paired)
        if power_se(effect, se, dof, q=_critical(c, dof)) >= POWER:
            return k
        k = k + 1 if k < 64 else int(k * 1.1)
    return None
