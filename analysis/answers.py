"""The answer in words, computed from the tables: which arm wins, by how much, with what certainty.

Every sentence that names a winner comes from ``Comparison.winner`` (a test, p < 0.05 after Holm and a
95% interval of the difference that excludes zero). A tested tie says "no significant difference at
this budget"; a comparison without a test says "not tested" and why (1 seed, zero variance), never
"no significant difference". Every arm, setting and guidance weight asked about is named: one with
no usable value reads "no <metric> recorded" (or the reason its job failed), never silently dropped.
"""

from __future__ import annotations

import math

import pandas as pd

from harness.config import SamplerSetting

from .crossing import recognizable_answer, recognizable_steps  # noqa: F401 - re-exported: opening and sections read them here
from .multiplicity import all_pairs, summary
from .stats import Comparison, compare, compare_to_reference, estimate, holm_family, metric_estimate, pareto_front
from .words import (
    LOWER_IS_BETTER,
    NO_DIFFERENCE,
    comparison_sentence,
    estimate_words,
    margin_of_b,
    num,
    ranked,
    seeds,
    swap,
    test_words,
    untested_words,
    usable_seeds,
    with_ci,
    worst_case,
)


def arms_answer(
    evals: pd.DataFrame,
    arms: list[str],
    metric: str = "fid",
    unit: str = "FID",
    reasons: dict[str, str] | None = None,
    comps: list[Comparison] | None = None,
) -> str:
    """Every arm of ``arms`` on ``metric`` (``evals``: one row per arm and seed, one setting). An arm without
    a usable value is named with ``reasons[arm]`` (default 'no <metric> recorded'). ``comps``: the pairs
    as the question's family adjusted them (``verdicts.family``); default: this metric's pairs alone."""
    lower = LOWER_IS_BETTER.get(metric, True)
    n = {a: usable_seeds(evals, metric, "arm_label", a) for a in arms}
    absent = "; ".join(f"{a}: {(reasons or {}).get(a, f'no {metric} recorded')}" for a in arms if not n[a])
    absent = f"; {absent}" if absent else ""
    order = ranked(evals, metric, "arm_label", [a for a in arms if n[a]])
    mean = {a: estimate(evals.loc[evals["arm_label"] == a, metric]).mean for a in order}
    if len(order) < 2:
        has = f"only {order[0]} has a {unit} ({num(mean[order[0]])})" if order else f"no arm has a {unit}"
        return f"{has}, so there is nothing to compare{absent}"
    testable = [a for a in order if n[a] >= 2]  # a winner needs >= 2 usable seeds in each arm
    few = [a for a in order if n[a] < 2]
    few_words = "; ".join(f"{a} {num(mean[a])}, not tested ({seeds(n[a])})" for a in few)
    if len(testable) < 2:
        values = "; ".join(f"{a} {num(mean[a])} ({seeds(n[a])})" for a in order)
        why = "1 seed per arm" if max(n.values()) == 1 else f"fewer than 2 seeds with a {unit} in all but one arm"
        return (
            f"not tested ({why}), only the values: {unit} {values} ({'lower' if lower else 'higher'} is better); "
            f"a difference without a test is not evidence of a winner{absent}"
        )
    if comps is None:
        comps = holm_family(all_pairs(evals, metric, testable))
    best = testable[0]
    # Each other arm against the best, oriented (other, best) as the sentences read.
    against = [c if c.b == best else swap(c) for c in comps if best in (c.a, c.b) and {c.a, c.b} <= set(testable)]
    if len(against) == 1 and not few:
        return comparison_sentence(against[0], unit) + absent
    e = summary(evals, metric, best)
    family = max((c.family for c in comps), default=1)
    text = (
        f"{best} has the {'lowest' if lower else 'highest'} mean {unit} of the arms with 2 or more seeds, "
        f"{estimate_words(e)}"
    )
    beaten = [c for c in against if c.winner == best]
    tied = [c for c in against if c.test != "none" and c.winner is None]
    untested = [c for c in against if c.test == "none"]
    if beaten:
        text += "; it beats " + "; ".join(f"{c.a} by {margin_of_b(c, unit, family)}" for c in beaten)
    if tied:
        text += (
            f"; against {', '.join(c.a for c in tied)} there is {NO_DIFFERENCE} ("
            + "; ".join(f"{c.a}: {test_words(c, family)}, {worst_case(c, unit)}" for c in tied)
            + ")"
        )
    if untested:
        text += "; against " + "; ".join(f"{c.a} ({num(c.a_est.mean)}) {untested_words(c, unit)}" for c in untested)
    if few:
        text += f"; {few_words}"
    return text + absent


# -- sampler settings -------------------------------------------------------------------------------

SERIES_FIELDS = tuple(f for f in SamplerSetting.model_fields if f not in ("steps", "guidance"))  # one line of a plot


def series_name(row) -> str:
    """The sampler of a setting without its step count: 'ddim eta=0' (SamplerSetting.series)."""
    return SamplerSetting.model_validate({f: getattr(row, f) for f in SERIES_FIELDS}).series


def settings_answer(evals: pd.DataFrame, settings: list[str] | None = None) -> str:
    """Each setting against the most expensive one with a testable FID (largest counted NFE), paired over
    seeds; ``settings`` (plan order) names those with no evaluation at all. A setting without a usable FID
    is named, never counted as 'no significant loss'."""
    settings = list(dict.fromkeys([*(settings or []), *evals["setting"]]))
    nfe = evals.groupby("setting", sort=False)["nfe"].mean()
    n = {s: usable_seeds(evals, "fid", "setting", s) for s in settings}
    fid = {s: metric_estimate(evals.loc[evals["setting"] == s, "fid"], "fid") for s in settings}
    nothing = [f"no evaluation recorded with {s}" for s in settings if s not in nfe.index]
    nothing += [f"no FID recorded with {s} ({num(nfe[s])} NFE)" for s in settings if s in nfe.index and not n[s]]
    tail = ("; " + "; ".join(nothing)) if nothing else ""
    have = sorted((s for s in settings if n[s]), key=lambda s: -nfe[s])
    testable = [s for s in have if n[s] >= 2]
    if not have:
        return "no setting has a FID" + tail
    reference = testable[0] if len(testable) >= 2 else have[0]
    ref = fid[reference]
    head = f"against the most expensive setting with a FID, {reference} ({num(nfe[reference])} NFE; FID " + (
        f"{num(ref.mean)}, 95% CI {num(ref.low)} to {num(ref.high)})" if ref.has_interval else f"{num(ref.mean)})"
    )
    if len(testable) < 2:
        values = "; ".join(f"{s} ({num(nfe[s])} NFE) {num(fid[s].mean)} ({seeds(n[s])})" for s in have[1:])
        return (
            f"{head}, no setting pair has 2 or more seeds with a FID each, so no tests; FID per setting: {values}{tail}"
        )
    comps = {c.a: c for c in settings_comparisons(evals, settings)}
    meta = evals.drop_duplicates("setting").set_index("setting")
    sentences = []
    for name, group in meta.loc[[s for s in have if s != reference]].groupby(
        meta.loc[[s for s in have if s != reference]].apply(series_name, axis=1), sort=False
    ):
        ordered = list(group.index)  # most to fewest NFE
        worse = [s for s in ordered if s in comps and comps[s].winner == reference]
        better = [s for s in ordered if s in comps and comps[s].winner == s]
        tied = [s for s in ordered if s in comps and comps[s].test != "none" and comps[s].winner is None]
        untested = [s for s in ordered if s not in comps or comps[s].test == "none"]
        lowest_ok = [s for s in tied if all(nfe[w] < nfe[s] for w in worse)]
        parts = [
            f"no significant loss down to {num(nfe[s])} NFE (not shown equal: the data allow it to be up to "
            f"{num(comps[s].diff.high)} FID worse)"
            for s in lowest_ok[-1:]
        ]
        if worse:
            parts.append(
                "worse "
                + ", ".join(f"at {num(nfe[s])} NFE by {margin_of_b(comps[s], 'FID', len(comps))}" for s in worse)
            )
        if better:
            parts.append("better at " + ", ".join(f"{num(nfe[s])} NFE" for s in better))
        parts += [
            f"at {num(nfe[s])} NFE FID {num(fid[s].mean)}, "
            + (untested_words(comps[s], "FID") if s in comps else f"not tested ({seeds(n[s])})")
            for s in untested
        ]
        sentences.append(f"{name}: " + "; ".join(parts))
    return f"{head}, paired over seeds and Holm-adjusted over {len(comps)} comparisons: " + "; ".join(sentences) + tail


def settings_comparisons(evals: pd.DataFrame, settings: list[str] | None = None) -> list[Comparison]:
    """Each setting with 2+ seeds of FID against the most expensive such setting (largest NFE), Holm-adjusted:
    the comparisons ``settings_answer`` words and ``verdicts`` lists (one computation for both)."""
    nfe = evals.groupby("setting", sort=False)["nfe"].mean()
    settings = [s for s in dict.fromkeys([*(settings or []), *evals["setting"]]) if s in nfe.index]
    testable = [s for s in sorted(settings, key=lambda s: -nfe[s]) if usable_seeds(evals, "fid", "setting", s) >= 2]
    if len(testable) < 2:
        return []
    return compare_to_reference(evals, "fid", testable[0], testable[1:], by="setting", lower_is_better=True)


def guidance_comparisons(evals: pd.DataFrame, knob: str = "guidance", symbol: str = "w") -> list[Comparison]:
    """Class accuracy of each weight with 2+ seeds against the best one, Holm-adjusted (as ``guidance_answer``
    words them; [] when the best weight has fewer than 2 seeds or nothing to compare it with)."""
    e = evals.assign(w=evals[knob].map(f"{symbol} = {{:g}}".format))
    ws = list(dict.fromkeys(e.sort_values(knob)["w"]))
    n = {w: usable_seeds(e, "class_accuracy", "w", w) for w in ws}
    measured = [w for w in ws if n[w]]
    testable = [w for w in measured if n[w] >= 2]
    if not measured:
        return []
    best = ranked(e, "class_accuracy", "w", measured)[0]
    if best not in testable or len(testable) < 2:
        return []
    others = [w for w in testable if w != best]
    return compare_to_reference(e, "class_accuracy", best, others, by="w", lower_is_better=False)


def settings_front(evals: pd.DataFrame) -> pd.DataFrame:
    """Per arm, the Pareto front of its settings with a FID (columns arm_label, setting, nfe, classifier_passes,
    fid: means over seeds). FID is never averaged across arms: different models, whose FIDs at one setting
    are different quantities. Costs are per sample and not added up: ``nfe`` counts network evaluations as
    batch rows (a classifier-free-guided step counts 2), ``classifier_passes`` the classifier's forward and
    backward passes (0 without classifier guidance; NaN where an older run did not log it, so that setting
    can neither dominate nor be dominated)."""
    passes = evals["classifier_passes"] if "classifier_passes" in evals else pd.Series(math.nan, index=evals.index)
    if "classifier_scale" in evals:
        passes = passes.mask(passes.isna() & (evals["classifier_scale"] == 0), 0.0)  # no classifier, no passes
    cols = ["nfe", "classifier_passes", "fid"]
    per = evals.assign(classifier_passes=passes).groupby(["arm_label", "setting"], as_index=False, sort=False)[cols]
    per = per.mean().dropna(subset=["fid"])
    fronts = [pareto_front(g, minimize=tuple(cols)).sort_values("nfe") for _, g in per.groupby("arm_label", sort=False)]
    return pd.concat(fronts, ignore_index=True) if fronts else per.reset_index(drop=True)


def front_sentence(evals: pd.DataFrame) -> str:
    """The Pareto fronts of ``settings_front`` in words, one clause per arm."""
    front = settings_front(evals)
    guided = bool(front["classifier_passes"].fillna(1).gt(0).any())  # NaN: a classifier-guided run of old

    def point(r) -> str:
        passes = f", {num(r.classifier_passes)} classifier passes" if pd.notna(r.classifier_passes) else ""
        passes = passes or ", classifier passes not logged"
        return f"{r.setting} ({num(r.nfe)} NFE{passes if guided else ''}, FID {num(r.fid)})"

    arms = list(dict.fromkeys(front["arm_label"]))
    clauses = ["; ".join(point(r) for r in front[front["arm_label"] == arm].itertuples()) for arm in arms]
    if len(arms) > 1:
        head = "Pareto front of each arm's settings (no setting of that arm is both cheaper and better; FIDs of "
        head += "different arms are not averaged): "
        clauses = [f"{arm}: {c}" for arm, c in zip(arms, clauses)]
    else:
        head = "Pareto front (no setting is both cheaper and better): "
    cost = ". NFE counts network evaluations per sample as batch rows (a classifier-free-guided step counts 2)"
    if guided:
        cost += "; classifier passes (forward and backward per sample) are a separate cost, not added to NFE"
    return head + (" | ".join(clauses) or "none") + cost + "."


# -- guidance ---------------------------------------------------------------------------------------


def guidance_answer(evals: pd.DataFrame, knob: str = "guidance", symbol: str = "w") -> str:
    """Best w by class accuracy, the smallest w not significantly below it, and what FID does. A weight
    without class accuracy is named and kept in the Pareto front, marked: it cannot be ruled out. ``knob``
    and ``symbol``: the weight's column and name (``classifier_scale`` and s for classifier guidance)."""
    e = evals.assign(w=evals[knob].map(f"{symbol} = {{:g}}".format))
    ws = list(dict.fromkeys(e.sort_values(knob)["w"]))
    if len(ws) < 2:
        return "guidance does not vary"
    n = {w: usable_seeds(e, "class_accuracy", "w", w) for w in ws}
    blind = [w for w in ws if not n[w]]
    measured = [w for w in ws if n[w]]
    blind_words = f"; no class accuracy recorded at {', '.join(blind)}" if blind else ""
    per = e.groupby("w", as_index=False, sort=False)[["fid", "class_accuracy"]].mean()
    placed = per.dropna(subset=["fid", "class_accuracy"])
    front = list(pareto_front(placed, minimize=("fid",), maximize=("class_accuracy",))["w"])
    unplaced = [w for w in ws if w not in set(placed["w"])]
    front_words = f"Pareto-optimal (FID against class accuracy): {', '.join(front) or 'none'}" + (
        f"; {', '.join(unplaced)} cannot be placed or ruled out (a metric is missing)" if unplaced else ""
    )
    if not measured:
        return f"class accuracy is not recorded at any {symbol}{blind_words}. {front_words}"
    by_acc = ranked(e, "class_accuracy", "w", measured)
    best = by_acc[0]
    acc = metric_estimate(e.loc[e["w"] == best, "class_accuracy"], "class_accuracy")
    if (
        placed["class_accuracy"].nunique() == 1 and len(measured) > 1
    ):  # "highest at w = 0" would crown the first of equals
        text = f"class accuracy is {num(acc.mean)} at every {symbol} where it is recorded"
    else:
        text = f"class accuracy is highest at {best} ({with_ci(acc.mean, acc.low, acc.high)})"
    text += blind_words + recognized_words(e, measured)
    by_fid = ranked(e, "fid", "w", ws)
    if by_fid:
        fid_best = metric_estimate(e.loc[e["w"] == by_fid[0], "fid"], "fid")
        text += f"; FID is lowest at {by_fid[0]} ({with_ci(fid_best.mean, fid_best.low, fid_best.high)})"
    testable = [w for w in measured if n[w] >= 2]
    if best not in testable or len(testable) < 2:
        values = "; ".join(
            f"{r.w}: class accuracy {num(r.class_accuracy)}, FID {num(r.fid)} ({seeds(n[r.w])})"
            for r in per.itertuples()
        )
        return f"{text}. Too few seeds with class accuracy for tests: {values}. {front_words}"
    comps = guidance_comparisons(evals, knob, symbol)
    tied = [c.a for c in comps if c.test != "none" and c.winner is None]
    untested = [c for c in comps if c.test == "none"]
    pick = next(w for w in ws if w == best or w in tied)  # ws are in increasing w
    text += (
        f". Weights with {NO_DIFFERENCE} in class accuracy from {best}: {', '.join(tied) if tied else 'none'} "
        f"(paired over seeds, Holm-adjusted over {len(comps)} comparisons)"
    )
    if untested or len(testable) < len(measured):
        text += "; " + "; ".join(
            [f"{c.a} {untested_words(c, 'class accuracy')}" for c in untested]
            + [f"{w} not tested ({seeds(n[w])})" for w in measured if w not in testable]
        )
    if pick != best:
        lowest = -next(c for c in comps if c.a == pick).diff.low  # how much lower pick's accuracy may be
        c = compare(e, "fid", pick, best, by="w", lower_is_better=True)
        text += (
            f". The smallest such weight, {pick}, is not significantly below {best} in class accuracy (not shown "
            f"equal: the data allow it to be up to {num(lowest)} lower); on FID "
            f"{comparison_sentence(c, 'FID')}"
        )
    return f"{text}. {front_words}"


def recognized_words(e: pd.DataFrame, ws: list[str]) -> str:
    """Class accuracy among recognizable samples per w, when the evaluator logged it."""
    col = "recognized_class_accuracy"
    if col not in e or e[col].isna().all():
        return ""
    means = e.groupby("w", sort=False)[col].mean()
    return "; among recognizable samples only, class accuracy is " + ", ".join(
        f"{num(means.get(w, math.nan))} at {w}" for w in ws
    )
