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

from .load import AblationData
from .multiplicity import all_pairs, summary
from .stats import Comparison, compare, compare_to_reference, estimate, first_step_reaching, holm_family, pareto_front
from .words import (
    LOWER_IS_BETTER,
    NO_DIFFERENCE,
    and_list,
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


# -- recognizability --------------------------------------------------------------------------------


def recognizable_steps(data: AblationData, setting: str) -> pd.DataFrame:
    """Per training run, in plan order of arms and ascending seeds: ``at``, the first evaluation at which
    recognizability reaches the run's ``eval.recognizable_fraction`` with ``setting`` (None: not within this
    budget), and ``first_at``, the first evaluation, both in the report's ``unit`` (step or epoch, one per
    experiment: ``AblationData.unit``); ``logged``: whether the run logged periodic evaluations here at all."""
    rows = []
    curve = data.curves[(data.curves["setting"] == setting) & (data.curves["metric"] == "recognizability")]
    curve = curve.assign(at=data.to_unit(curve))
    for run in data.runs.itertuples():
        mine = curve[curve["run_id"] == run.run_id]
        hit = first_step_reaching(mine, run.recognizable_fraction) if len(mine) else None
        rows.append(
            {
                "run_id": run.run_id,
                "arm_label": run.arm_label,
                "seed": run.seed,
                "at": None if hit is None else mine.loc[mine["step"] == hit, "at"].iloc[0],
                "first_at": mine["at"].min() if len(mine) else None,
                "unit": data.unit,
                "logged": len(mine) > 0,
                "reused": not run.has_history,
                "threshold": run.recognizable_fraction,
            }
        )
    columns = ["run_id", "arm_label", "seed", "at", "first_at", "unit", "logged", "reused", "threshold"]
    order = {a: i for i, a in enumerate(data.arms)}
    df = pd.DataFrame(rows, columns=columns)
    df = df.sort_values(["arm_label", "seed"], key=lambda c: c.map(order) if c.name == "arm_label" else c)
    return df.reset_index(drop=True)


def recognizable_answer(steps: pd.DataFrame, arms: list[str], setting: str) -> str:
    """'digits become recognizable at step 1,250 with cosine; at step 2,000 with linear' (medians over seeds;
    'at epoch 10' where the runs count epochs)."""
    if steps.empty or not steps["logged"].any():
        why = (
            ": its training runs resumed checkpoints that another experiment had already finished"
            if steps["reused"].any()
            else ""
        )
        return f"recognizability over training was not logged in this experiment{why}"
    threshold, unit = steps["threshold"].iloc[0], steps["unit"].iloc[0]
    phrases: dict[str, list[str]] = {}  # phrase -> arms, so arms that agree share one phrase
    first_hit: dict[str, float] = {}  # phrase -> its step or epoch, to list the soonest first
    at_first, reached = [], {}
    for arm in [a for a in arms if a in set(steps["arm_label"])]:
        mine = steps[(steps["arm_label"] == arm) & steps["logged"]]
        if mine.empty:
            phrases.setdefault("unknown for {arms} (no periodic evaluations logged here)", []).append(arm)
            continue
        hit = mine["at"].dropna().astype(float)
        reached[arm] = list(hit) if len(hit) == len(mine) else None
        if hit.empty:
            phrases.setdefault("not within this budget with {arms}", []).append(arm)
            continue
        where = f"at {unit} {num(hit.median())}"
        if len(hit) < len(mine):
            where += f" in {len(hit)} of {len(mine)} seeds (median), not within this budget in the others,"
        elif len(mine) > 1:
            where += (
                f" (all {len(hit)} seeds)"
                if hit.nunique() == 1
                else f" (median of {len(hit)} seeds, {num(hit.min())} to {num(hit.max())})"
            )
        phrases.setdefault(where + " with {arms}", []).append(arm)
        first_hit[where + " with {arms}"] = hit.median()
        if (mine["at"] == mine["first_at"]).all():
            at_first.append(arm)
    text = f"digits become recognizable (recognizability >= {threshold:g} with {setting}) " + "; ".join(
        p.format(arms=and_list(a))
        for p, a in sorted(
            phrases.items(),
            key=lambda pa: (0 if pa[0] in first_hit else 1 if pa[0].startswith("not") else 2, first_hit.get(pa[0], 0)),
        )
    )
    if len(reached) == 2 and all(v is not None for v in reached.values()):
        (a, sa), (b, sb) = reached.items()
        one = " (one seed: an observation, not a test)" if min(len(sa), len(sb)) == 1 else ""
        if max(sa) < min(sb) or max(sb) < min(sa):
            text += f"; {a if max(sa) < min(sb) else b} is sooner in every seed{one}"
        elif set(sa) == set(sb) == {sa[0]}:
            text += f"; both reach it at the same evaluation{one}"
        else:
            text += "; neither is sooner in every seed"
    if at_first:
        text += (
            f". For {and_list(at_first)} that is already the first evaluation, so it happened at or before that "
            f"{unit}; evaluating earlier would place it more precisely"
        )
    return text


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
    fid = {s: estimate(evals.loc[evals["setting"] == s, "fid"]) for s in settings}
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
    """The Pareto front of mean NFE against mean FID over settings with a FID (columns setting, nfe, fid)."""
    per = evals.groupby("setting", as_index=False, sort=False)[["nfe", "fid"]].mean().dropna(subset=["fid"])
    return pareto_front(per, minimize=("nfe", "fid")).sort_values("nfe")


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
    acc = estimate(e.loc[e["w"] == best, "class_accuracy"])
    if (
        placed["class_accuracy"].nunique() == 1 and len(measured) > 1
    ):  # "highest at w = 0" would crown the first of equals
        text = f"class accuracy is {num(acc.mean)} at every {symbol} where it is recorded"
    else:
        text = f"class accuracy is highest at {best} ({with_ci(acc.mean, acc.low, acc.high)})"
    text += blind_words + recognized_words(e, measured)
    by_fid = ranked(e, "fid", "w", ws)
    if by_fid:
        fid_best = estimate(e.loc[e["w"] == by_fid[0], "fid"])
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
