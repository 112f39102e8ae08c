"""Arms compared at equal cost when each is sampled with settings of its own.

A process ablation samples DDPM with ``ddim`` and flow matching with ``euler`` or ``heun`` (a setting goes
only to the arms whose process it fits), so no setting label is shared by every arm, and a comparison "at
the first setting" would hold one arm. The question such a spec asks is about equal cost: the same number
of network evaluations per sample (the ``nfe`` metric, measured by the sampler, not derived from the
label). Every (arm, setting) evaluated at an NFE is a candidate there, and the candidates of one NFE are
compared the way arms are (``answers.arms_answer``: the best mean against each other candidate, a paired
or Welch t-test, Holm-adjusted; a winner only with p < 0.05 and an interval that excludes zero).
"""

from __future__ import annotations

import pandas as pd

from .answers import arms_answer
from .caveats import fid_refusal
from .families import sampler_family
from .load import AblationData
from .render import Section, Table
from .stats import metric_estimate
from .words import and_list, num, with_ci


def disjoint(data: AblationData) -> bool:
    """Whether no setting was evaluated on every arm that has evaluations (so arms meet only by NFE)."""
    e = data.evals
    if len(data.arms) < 2 or e.empty:
        return False
    have = [set(e.loc[e["arm_label"] == a, "setting"]) for a in data.arms if (e["arm_label"] == a).any()]
    return len(have) >= 2 and not set.intersection(*have)


def candidates(data: AblationData) -> pd.DataFrame:
    """Final evaluations at the first setting's guidance weight with a measured NFE, plus ``cost`` (the NFE,
    rounded: a sampler's count is an integer per sample) and ``candidate`` ('<arm> <setting>')."""
    e = sampler_family(data).dropna(subset=["nfe"])
    return e.assign(cost=e["nfe"].round().astype(int), candidate=e["arm_label"] + " " + e["setting"])


def matched_costs(c: pd.DataFrame) -> list[int]:
    """The NFEs at which two or more arms have a candidate, ascending."""
    arms = c.groupby("cost")["arm_label"].nunique()
    return sorted(int(n) for n in arms[arms >= 2].index)


def matched_sentences(data: AblationData, comps: list | None = None) -> list[str]:
    """One sentence per matched NFE, then one naming the NFEs only one arm reached. ``comps``: the pairs of
    candidates as the question's family adjusted them (``verdicts.family``)."""
    c = candidates(data)
    out = []
    for n in matched_costs(c):
        at = c[c["cost"] == n]
        refusal = fid_refusal(at, data.runs)  # before relabelling: it names arm and setting itself
        cands = list(dict.fromkeys(at["candidate"]))
        mine = [c for c in comps or [] if c.a in cands and c.b in cands] or None
        words = refusal or arms_answer(at.assign(arm_label=at["candidate"]), cands, comps=mine)
        out.append(f"At {n} NFE (FID at the end of training): {words}.")
    lonely = sorted(set(c["cost"]) - set(matched_costs(c)))
    if lonely:
        only = [f"{n} NFE ({and_list(list(dict.fromkeys(c.loc[c['cost'] == n, 'candidate'])))})" for n in lonely]
        out.append(f"Only one arm was evaluated at {and_list(only)}, so nothing is compared there.")
    if not out:
        out.append("No evaluation recorded its NFE, so the arms cannot be matched by cost.")
    return out


def matched_section(data: AblationData) -> Section | None:
    """FID of every candidate, grouped by NFE, when arms were sampled with settings of their own."""
    if not disjoint(data):
        return None
    c = candidates(data)
    s = Section("Arms compared at matched NFE")
    s.paragraphs.append(
        "The arms were sampled with settings of their own (a setting fits one process), so they are compared "
        "at equal cost: the same number of network evaluations per sample (NFE, as the sampler counted them). "
        "Within each NFE the answer above tests every pair of candidates (Tukey's HSD with 3 or more), adjusted "
        "with every other comparison of the answer (Holm). "
        "Heun's last step is an Euler step, so heun-k costs 2k - 1 evaluations."
    )
    rows = []
    for n in sorted(set(c["cost"])):
        at = c[c["cost"] == n]
        for cand in dict.fromkeys(at["candidate"]):
            mine = at[at["candidate"] == cand]
            e = metric_estimate(mine["fid"], "fid")
            rows.append(
                [
                    str(n),
                    mine["arm_label"].iloc[0],
                    mine["setting"].iloc[0],
                    with_ci(e.mean, e.low, e.high) if e.n else "no FID recorded",
                    num(e.n),
                    "yes" if n in matched_costs(c) else "no (one arm only)",
                ]
            )
    s.tables.append(Table(["NFE", "arm", "setting", "FID [95% CI]", "seeds", "matched"], rows))
    return s
