"""The report's table of comparisons: every verdict of the arms question (``verdicts.family``), one row
each, so the table and the opening paragraph read the same objects: the same adjusted p, the interval
at the level that matches it, the refusals, the minimum detectable effect."""

from __future__ import annotations

import math

from .caveats import failed_arms
from .load import AblationData
from .matched import disjoint
from .render import Section, Table
from .stats import ZERO_VARIANCE
from .verdicts import QUALITY, Verdict, family, shared_setting
from .words import ci_name, metric_label, num, pval, worst_case


def cell(mean: float, low: float, high: float) -> str:
    return f"{num(mean)} [{num(low)}, {num(high)}]" if math.isfinite(low) else num(mean)


def verdict_words(v: Verdict) -> str:
    """The last column: who is better, or why nobody is."""
    c, unit = v.comparison, metric_label(v.metric)
    if c is None:
        return v.reason
    if c.test == "none":
        if c.untested == ZERO_VARIANCE:
            return f"not tested: identical in every seed (difference {num(c.diff.mean)})"
        return v.reason
    if v.winner:
        return f"{v.winner} better"
    if v.reason == "equivalent within margin":
        return f"equivalent within {num(v.margin)} {unit} (TOST p = {pval(v.p_equivalence)[4:]})"
    return f"not significant; {worst_case(c, unit)}"


def row(v: Verdict) -> list:
    c = v.comparison
    if c is None or c.test == "none":
        diff = "" if c is None else cell(c.diff.mean, math.nan, math.nan)
        return [metric_label(v.metric), f"{v.compared[0]} - {v.compared[1]}", diff, "none", "", "", verdict_words(v)]
    return [
        metric_label(v.metric),
        f"{c.a} - {c.b}",
        f"{cell(c.diff.mean, c.diff.low, c.diff.high)} ({ci_name(c.diff.level)})",
        c.test,
        f"{c.p_raw:.3g} / {c.p:.3g}",
        num(v.mde),
        verdict_words(v),
    ]


def comparison_section(data: AblationData, *, margins: dict[str, float] | None = None) -> Section | None:
    """Every metric: every pair of arms at the shared setting, adjusted as one family with the answer."""
    if len(data.arms) < 2 or data.evals.empty or disjoint(data):  # disjoint: matched_section compares by NFE
        return None
    setting = shared_setting(data)
    at = data.evals[data.evals["setting"] == setting]
    s = Section(f"Arms compared ({setting}, end of training)")
    fam = [v for v in family(data, margins=margins) if v.metric != "final_loss"]
    failed, rows = failed_arms(data), []
    for metric in [m for m in QUALITY if m in at and at[m].notna().any()]:
        have = set(at.loc[at[metric].notna(), "arm_label"])
        rows += [
            [metric_label(metric), a, "", "none", "", "", failed.get(a, f"no {metric} recorded")]
            for a in data.arms
            if a not in have
        ]
        rows += [row(v) for v in fam if v.metric == metric]
    size = max((v.comparison.family for v in fam if v.comparison), default=1)
    s.paragraphs.append(
        f"Every pair of arms on every metric, one family of {size} tested comparisons with the answer above "
        "(the final training loss included): with 3 or more arms Tukey's HSD over the arms (blocked by seed "
        "when every arm has the same seeds), with 2 a paired t-test (Welch's when the seeds differ); Holm across "
        "metrics. p is shown raw / adjusted; each interval is at the level that matches its adjusted p, so it "
        "excludes zero exactly when the row names a winner. MDE: the difference this design detects with 80% "
        "power at that level. With fewer than 2 seeds, or a difference that is the same in every seed up to "
        "rounding, there is no test; FIDs, KIDs, precision and recall at different N, reference sets or feature "
        "spaces are refused. Lower is better for FID and KID, higher for the rest."
    )
    s.tables.append(Table(["metric", "arms", "difference [CI]", "test", "p raw / adjusted", "MDE", "verdict"], rows))
    return s
