"""The verdicts of a report, one per comparison its answer makes: the one source of its sentences.

``verdicts(data)`` builds one multiplicity family for the arms question: every metric at the shared
setting, every pair of arms (Tukey within a metric, ``multiplicity``), the final training loss within
each training objective, and every NFE at which arms sampled with their own settings meet; Holm across
them. A pair that must not be compared is in the list as refused, with the reason: FIDs, KIDs,
precision and recall at different N, against a different reference or in a different feature space;
losses of different objectives or data spaces. Where the spec states a margin for a metric, a
non-significant pair is also tested for equivalence (TOST: both one-sided t-tests at the adjusted level).
The opening paragraph and the comparison table render these objects; answers.json is their ``to_dict``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd
from scipy import stats as sps

from . import matched
from .answers import guidance_comparisons, settings_comparisons
from .caveats import FID_BASIS, fid_refusal, objective_groups, objective_of
from .families import first_setting, guidance_family, sampler_family, varies_guidance, varies_sampler
from .load import AblationData
from .multiplicity import all_pairs, holm_groups
from .power import comparison_mde, comparison_seeds
from .stats import ZERO_VARIANCE, Comparison
from .words import LOWER_IS_BETTER, metric_label, num

# Metrics whose value depends on the number of samples, the reference set and the feature extractor.
BASIS_METRICS = ("fid", "kid", "precision", "recall", "fid_inception", "fid_inf")
BASIS_WORDS = {"num_generated": "N", "num_reference": "reference set", "dataset": "data set"}
BASIS_WORDS["feature_fingerprint"] = "feature space"
# The quality metrics compared across arms (a FID floor or a FID's standard error is no quality of the model).
QUALITY = tuple(m for m in LOWER_IS_BETTER if m not in ("final_loss", "fid_floor", "fid_se"))


@dataclass(frozen=True)
class Verdict:
    """One comparison the answer makes. ``comparison`` is None when it is refused; ``winner`` None unless
    the adjusted test is significant; ``reason`` says why there is no winner."""

    question: str  # 'arms with ddim-50-eta0-w0', 'final training loss', '50 NFE'
    metric: str
    compared: tuple[str, str]
    comparison: Comparison | None
    reason: str
    mde: float = math.nan
    margin: float | None = None
    p_equivalence: float = math.nan
    seeds_for_margin: int | None = None  # seeds per arm that would detect the margin with 80% power

    @property
    def winner(self) -> str | None:
        return self.comparison.winner if self.comparison is not None else None

    def to_dict(self) -> dict:
        c = self.comparison
        finite = lambda x: float(x) if x is not None and math.isfinite(x) else None  # noqa: E731
        return {
            "question": self.question,
            "metric": self.metric,
            "unit": metric_label(self.metric),
            "compared": list(self.compared),
            "estimate": finite(c.diff.mean) if c else None,  # mean(first) - mean(second), in ``unit``
            "interval": [finite(c.diff.low), finite(c.diff.high)] if c else [None, None],
            "level": finite(c.diff.level) if c else None,
            "test": c.test if c else None,
            "p": finite(c.p_raw) if c else None,
            "p_adjusted": finite(c.p) if c else None,
            "family": c.family if c else None,
            "winner": self.winner,
            "reason": self.reason,
            "n": [c.a_est.n, c.b_est.n] if c else None,
            "mde": finite(self.mde),
            "margin": self.margin,
            "p_equivalence": finite(self.p_equivalence),
            "seeds_for_margin": self.seeds_for_margin,
        }


def verdicts(data: AblationData, *, margins: dict[str, float] | None = None) -> list[dict]:
    """The entries of answers.json: one per comparison the answer makes."""
    return [v.to_dict() for v in family(data, margins=margins)]


def shared_setting(data: AblationData) -> str | None:
    """The first setting (plan order) evaluated on every arm with evaluations, else the first setting: arms
    that share a setting are compared there, even when the plan's first setting is not theirs."""
    e = data.evals
    arms = [a for a in data.arms if (e["arm_label"] == a).any()]
    for s in data.settings:
        if all(((e["arm_label"] == a) & (e["setting"] == s) & e["fid"].notna()).any() for a in arms):
            return s
    return first_setting(data)


def family(data: AblationData, *, margins: dict[str, float] | None = None) -> list[Verdict]:
    """Every comparison of the arms question, adjusted as one family (empty: one arm or no evaluations)."""
    if data.evals.empty:
        return []
    if len(data.arms) < 2:
        return other_questions(data, margins)
    groups: list[tuple[str, list[Comparison]]] = []  # (question, sub-family)
    noise: dict[str, float] = {}
    refused: list[Verdict] = []
    if matched.disjoint(data):
        c = matched.candidates(data)
        for n in matched.matched_costs(c):
            at = c[c["cost"] == n].assign(arm_label=lambda d: d["candidate"])
            _metric(at, "fid", list(dict.fromkeys(at["candidate"])), f"{n} NFE", groups, refused)
    else:
        setting = shared_setting(data)
        at = data.evals[data.evals["setting"] == setting]
        noise = sampling_noise(at)
        for metric in [m for m in QUALITY if m in at and at[m].notna().any()]:
            _metric(at, metric, data.arms, f"arms with {setting}", groups, refused)
    _losses(data, groups, refused)
    adjusted = holm_groups([g for _, g in groups])
    out = [_verdict(q, with_sampling_noise(c, noise), margins) for (q, _), g in zip(groups, adjusted) for c in g]
    return out + refused + other_questions(data, margins)


def other_questions(data: AblationData, margins: dict[str, float] | None) -> list[Verdict]:
    """The comparisons of the sampler and guidance answers (each its own question and family), computed by
    the functions whose results those answers word. Settings compare within one arm only."""
    out = []
    if varies_sampler(data) and len(data.arms) == 1:
        fam = sampler_family(data)
        if fid_refusal(fam, data.runs) is None:
            comps = settings_comparisons(fam, data.settings)
            out += [_verdict(f"sampler settings against {c.b}", c, margins) for c in comps]
    if varies_guidance(data):
        fam = guidance_family(data)
        for arm in [a for a in data.arms if a in set(fam["arm_label"])]:
            comps = guidance_comparisons(fam[fam["arm_label"] == arm])
            out += [_verdict(f"guidance weights of {arm}", c, margins) for c in comps]
    return out


def _metric(at: pd.DataFrame, metric: str, arms: list[str], question: str, groups: list, refused: list) -> None:
    """The pairs of ``arms`` on ``metric``: tested within each basis, refused across bases."""
    have = [a for a in arms if at.loc[at["arm_label"] == a, metric].notna().any()]
    basis = _bases(at, metric, have)
    by_basis: dict[tuple, list[str]] = {}
    for a in have:
        by_basis.setdefault(basis[a], []).append(a)
    for arms_here in by_basis.values():
        if len(arms_here) > 1:
            groups.append((question, all_pairs(at, metric, arms_here)))
    keys = list(by_basis)
    for i, ka in enumerate(keys):
        for kb in keys[i + 1 :]:
            why = "refused: " + _basis_difference(ka, kb)
            refused += [Verdict(question, metric, (a, b), None, why) for a in by_basis[ka] for b in by_basis[kb]]


def _bases(at: pd.DataFrame, metric: str, arms: list[str]) -> dict[str, tuple]:
    """Each arm's basis for ``metric``: the FID_BASIS values of its evaluations (one basis for the rest)."""
    if metric not in BASIS_METRICS:
        return {a: () for a in arms}
    cols = [c for c in FID_BASIS if c in at]
    rows = at[at[metric].notna()]
    return {
        a: tuple(
            (c, tuple(sorted(map(str, rows.loc[rows["arm_label"] == a, c].astype(object).fillna("unlogged").unique()))))
            for c in cols
        )
        for a in arms
    }


def _basis_difference(ka: tuple, kb: tuple) -> str:
    """'different N (200 vs 400)' for the first field in which two bases differ."""
    for (col, va), (_, vb) in zip(ka, kb):
        if va != vb:
            show = lambda v: ", ".join(num(float(x)) if _is_number(x) else x for x in v)  # noqa: E731
            return f"different {BASIS_WORDS.get(col, col)} ({show(va)} vs {show(vb)})"
    return "different bases"


def _is_number(x: str) -> bool:
    try:
        return math.isfinite(float(x))
    except ValueError:
        return False


def _losses(data: AblationData, groups: list, refused: list) -> None:
    """Final losses within each training objective; pairs across objectives (or data spaces) refused."""
    objectives = objective_groups(data)
    runs = data.runs[data.runs["final_loss"].notna()]
    for g in objectives:
        arms = [a for a in g if (runs["arm_label"] == a).any()]
        if len(arms) > 1:
            groups.append(("final training loss", all_pairs(runs, "final_loss", arms)))
    for i, ga in enumerate(objectives):
        for gb in objectives[i + 1 :]:
            why = "refused: different objectives (" + objective_of(data, ga[0], gb[0]) + ")"
            refused += [Verdict("final training loss", "final_loss", (a, b), None, why) for a in ga for b in gb]


def sampling_noise(at: pd.DataFrame) -> dict[str, float]:
    """Per arm, the FID's own sampling noise at this N: the root mean square of its evaluations' bootstrap
    standard errors (``fid_se``, over the generated samples of one evaluation). Empty for runs before it."""
    if "fid_se" not in at:
        return {}
    se = at.dropna(subset=["fid_se"]).groupby("arm_label")["fid_se"]
    return {arm: math.sqrt((v**2).mean()) for arm, v in se}


def with_sampling_noise(c: Comparison, noise: dict[str, float]) -> Comparison:
    """A FID difference whose interval also holds the metric's own sampling variance.

    Every seed's FID is computed from one fixed noise set against one reference set, so the spread over
    seeds leaves out how much the FID would move with another draw of N samples. That error is shared by
    the seeds (the same x_T), so it does not average out over them: it is added to the interval's half width
    in quadrature, z * sqrt(se_a^2 + se_b^2) at the interval's own level. A winner must clear both."""
    if c.metric != "fid" or c.a not in noise or c.b not in noise or not c.diff.has_interval:
        return c
    extra = float(sps.norm.ppf(0.5 + c.diff.level / 2)) * math.hypot(noise[c.a], noise[c.b])
    half = math.hypot((c.diff.high - c.diff.low) / 2, extra)
    return replace(c, diff=replace(c.diff, low=c.diff.mean - half, high=c.diff.mean + half))


def _verdict(question: str, c: Comparison, margins: dict[str, float] | None) -> Verdict:
    margin = (margins or {}).get(c.metric)
    if c.test == "none":
        why = (
            f"not tested: identical in every seed (difference {num(c.diff.mean)})"
            if c.untested == ZERO_VARIANCE
            else f"not tested: {c.untested}"
        )
        return Verdict(question, c.metric, (c.a, c.b), c, why, margin=margin)
    mde = comparison_mde(c)
    need = comparison_seeds(c, margin) if margin is not None else None
    if c.winner:
        return Verdict(question, c.metric, (c.a, c.b), c, "", mde, margin, seeds_for_margin=need)
    p_eq = tost(c, margin) if margin is not None else math.nan
    why = "equivalent within margin" if p_eq < c.alpha else "not significant"
    if why == "not significant" and c.p < c.alpha:  # the seeds alone would say so; the N samples do not
        why = "not significant once the FID's own sampling noise at this N is added (fid_se)"
    return Verdict(question, c.metric, (c.a, c.b), c, why, mde, margin, p_eq, need)


def tost(c: Comparison, margin: float) -> float:
    """Two one-sided t-tests of |a - b| < margin on the comparison's own se and dof (Schuirmann 1987),
    adjusted like its two-sided p (times p / p_raw): below alpha, a and b are equivalent within margin."""
    d, se, dof = c.diff.mean, c.diff.se, c.diff.dof
    if not (math.isfinite(se) and se > 0):
        return math.nan
    p = max(float(sps.t.sf((d + margin) / se, dof)), float(sps.t.cdf((d - margin) / se, dof)))
    factor = c.p / c.p_raw if c.p_raw > 0 else 1.0
    return min(1.0, p * factor)
