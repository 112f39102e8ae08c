"""The answer in words, computed from the tables: which arm wins, by how much, with what certainty.

Every sentence that names a winner comes from ``Comparison.winner`` (a significant test whose 95%
interval of the difference excludes zero); otherwise it says "no significant difference at this
budget", and with one seed it says so and gives the values without a test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .load import AblationData
from .stats import Comparison, compare, compare_to_reference, estimate, first_step_reaching, pareto_front

NO_DIFFERENCE = "no significant difference at this budget"
LOWER_IS_BETTER = {"fid": True, "kid": True, "precision": False, "recall": False, "recognizability": False,
                   "class_accuracy": False, "final_loss": True}


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


def step(s: int) -> str:
    return f"step {s:,}"


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
    return Comparison(c.metric, c.b, c.a, c.b_est, c.a_est, type(d)(d.n, -d.mean, -d.high, -d.low, d.method), c.test,
                      c.p, c.lower_is_better, c.alpha)


def test_words(c: Comparison, family: int = 1) -> str:
    holm = f", Holm-adjusted over {family} comparisons" if family > 1 else ""
    return f"{seeds(c.diff.n)}, {c.test}-test {pval(c.p)}{holm}"


def comparison_sentence(c: Comparison, unit: str, family: int = 1) -> str:
    """One comparison: a winner with its margin, a tie, or the values of a single seed."""
    if c.test == "none":
        return (f"{c.a} {num(c.a_est.mean)} and {c.b} {num(c.b_est.mean)} {unit}: one seed only, so no interval "
                f"and no test")
    if c.winner == c.a:
        return f"{c.a} beats {c.b} by {margin_of_b(swap(c), unit, family)}"
    if c.winner == c.b:
        return f"{c.b} beats {c.a} by {margin_of_b(c, unit, family)}"
    return (f"{NO_DIFFERENCE} between {c.a} ({unit} {with_ci(c.a_est.mean, c.a_est.low, c.a_est.high)}) and {c.b} "
            f"({with_ci(c.b_est.mean, c.b_est.low, c.b_est.high)}); difference "
            f"{with_ci(c.diff.mean, c.diff.low, c.diff.high)} ({test_words(c, family)})")


def ranked(df: pd.DataFrame, metric: str, by: str, groups: list[str]) -> list[str]:
    """Groups from best to worst mean (ties keep the plan order)."""
    means = {g: estimate(df.loc[df[by] == g, metric]).mean for g in groups}
    means = {g: m for g, m in means.items() if math.isfinite(m)}
    sign = 1 if LOWER_IS_BETTER.get(metric, True) else -1
    return sorted(means, key=lambda g: sign * means[g])


def arms_answer(evals: pd.DataFrame, arms: list[str], metric: str = "fid", unit: str = "FID") -> str:
    """The arms compared on ``metric`` (one row per arm and seed in ``evals``, one setting)."""
    order = ranked(evals, metric, "arm_label", arms)
    if len(order) < 2:
        return f"only {len(order)} arm has a finished evaluation, so there is nothing to compare"
    lower = LOWER_IS_BETTER.get(metric, True)
    n_min = evals.groupby("arm_label")["seed"].nunique().reindex(order).min()
    if n_min < 2:
        values = "; ".join(f"{a} {num(estimate(evals.loc[evals['arm_label'] == a, metric]).mean)}" for a in order)
        return (f"with one seed per arm there is no interval and no test, only the values: {unit} {values} "
                f"({'lower' if lower else 'higher'} is better); a difference from one seed is not evidence of a winner")
    best, others = order[0], order[1:]
    if len(others) == 1:
        return comparison_sentence(compare(evals, metric, best, others[0], lower_is_better=lower), unit)
    comps = compare_to_reference(evals, metric, best, others, lower_is_better=lower)
    beaten = [c for c in comps if c.winner == best]
    tied = [c for c in comps if c.winner is None]
    e = estimate(evals.loc[evals["arm_label"] == best, metric])
    text = f"{best} has the {'lowest' if lower else 'highest'} mean {unit}, {with_ci(e.mean, e.low, e.high)}"
    if beaten:
        text += "; it beats " + "; ".join(f"{c.a} by {margin_of_b(c, unit, len(comps))}" for c in beaten)
    if tied:
        text += (f"; against {', '.join(c.a for c in tied)} there is {NO_DIFFERENCE} "
                 f"(Holm-adjusted over {len(comps)} comparisons)")
    return text


# -- recognizability --------------------------------------------------------------------------------

def recognizable_steps(data: AblationData, setting: str) -> pd.DataFrame:
    """Per training run: the first evaluation step at which recognizability reaches the run's
    ``eval.recognizable_fraction`` with ``setting`` (None: not within this budget), the first evaluation
    step, and whether the run logged periodic evaluations here at all (``logged``)."""
    rows = []
    curve = data.curves[(data.curves["setting"] == setting) & (data.curves["metric"] == "recognizability")]
    for run in data.runs.itertuples():
        mine = curve[curve["run_id"] == run.run_id]
        rows.append({"run_id": run.run_id, "arm_label": run.arm_label, "seed": run.seed,
                     "step": first_step_reaching(mine, run.recognizable_fraction) if len(mine) else None,
                     "first_eval": int(mine["step"].min()) if len(mine) else None, "logged": len(mine) > 0,
                     "reused": not run.has_history, "threshold": run.recognizable_fraction})
    return pd.DataFrame(rows, columns=["run_id", "arm_label", "seed", "step", "first_eval", "logged", "reused",
                                       "threshold"])


def recognizable_answer(steps: pd.DataFrame, arms: list[str], setting: str) -> str:
    """'digits become recognizable at step 1,250 with cosine; at step 2,000 with linear' (medians over seeds)."""
    if steps.empty or not steps["logged"].any():
        why = (": its training runs resumed checkpoints that another experiment had already finished"
               if steps["reused"].any() else "")
        return f"recognizability over training was not logged in this experiment{why}"
    threshold = steps["threshold"].iloc[0]
    phrases: dict[str, list[str]] = {}  # phrase -> arms, so arms that agree share one phrase
    first_hit: dict[str, int] = {}  # phrase -> its step, to list the soonest first
    suspicious, reached = [], {}
    for arm in [a for a in arms if a in set(steps["arm_label"])]:
        mine = steps[(steps["arm_label"] == arm) & steps["logged"]]
        if mine.empty:
            phrases.setdefault("unknown for {arms} (no periodic evaluations logged here)", []).append(arm)
            continue
        hit = mine["step"].dropna().astype(int)
        reached[arm] = list(hit) if len(hit) == len(mine) else None
        if hit.empty:
            phrases.setdefault("not within this budget with {arms}", []).append(arm)
            continue
        where = f"at {step(int(hit.median()))}"
        if len(hit) < len(mine):
            where += f" in {len(hit)} of {len(mine)} seeds (median), not within this budget in the others,"
        elif len(mine) > 1:
            where += (f" (all {len(hit)} seeds)" if hit.nunique() == 1
                      else f" (median of {len(hit)} seeds, {hit.min():,} to {hit.max():,})")
        phrases.setdefault(where + " with {arms}", []).append(arm)
        first_hit[where + " with {arms}"] = int(hit.median())
        if (mine["step"] == mine["first_eval"]).all():
            suspicious.append(arm)
    text = (f"digits become recognizable (recognizability >= {threshold:g} with {setting}) "
            + "; ".join(p.format(arms=_and(a)) for p, a in sorted(phrases.items(), key=lambda pa: (
                0 if pa[0] in first_hit else 1 if pa[0].startswith("not") else 2, first_hit.get(pa[0], 0)))))
    if len(reached) == 2 and all(v is not None for v in reached.values()):
        (a, sa), (b, sb) = reached.items()
        one = " (one seed: an observation, not a test)" if min(len(sa), len(sb)) == 1 else ""
        if max(sa) < min(sb) or max(sb) < min(sa):
            text += f"; {a if max(sa) < min(sb) else b} is sooner in every seed{one}"
        elif set(sa) == set(sb) == {sa[0]}:
            text += f"; both reach it at the same evaluation{one}"
        else:
            text += "; neither is sooner in every seed"
    if suspicious:
        text += (f". For {_and(suspicious)} that is already the first evaluation, where the domain classifier can be "
                 f"confident on noise: read it next to FID and the sample grids")
    return text


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""


# -- sampler settings -------------------------------------------------------------------------------

def series_name(sampler: str, eta: float) -> str:
    return f"{sampler} eta={eta:g}" if sampler == "ddim" else sampler


def settings_answer(evals: pd.DataFrame) -> str:
    """Each setting against the most expensive one (largest NFE) on FID, paired over seeds."""
    nfe = evals.groupby("setting", sort=False)["nfe"].mean()
    reference = nfe.idxmax()
    ref = estimate(evals.loc[evals["setting"] == reference, "fid"])
    others = [s for s in nfe.index if s != reference]
    head = (f"against the most expensive setting, {reference} ({num(nfe[reference])} NFE; FID {num(ref.mean)}"
            + (f", 95% CI {num(ref.low)} to {num(ref.high)})" if ref.has_interval else ")"))
    if evals.groupby("setting")["seed"].nunique().min() < 2:
        values = "; ".join(f"{s} ({num(nfe[s])} NFE) {num(estimate(evals.loc[evals['setting'] == s, 'fid']).mean)}"
                           for s in sorted(others, key=lambda s: nfe[s]))
        return f"{head}, one seed only, so no tests; FID per setting: {values}"
    comps = {c.a: c for c in compare_to_reference(evals, "fid", reference, others, by="setting", lower_is_better=True)}
    sentences = []
    meta = evals.drop_duplicates("setting").set_index("setting")
    for name, group in meta.loc[others].groupby(["sampler", "eta"], sort=False):
        ordered = sorted(group.index, key=lambda s: -nfe[s])  # most to fewest NFE
        worse = [s for s in ordered if comps[s].winner == reference]
        ok = [s for s in ordered if comps[s].winner != reference]
        label = series_name(*name)
        lowest_ok = [s for s in ok if all(nfe[w] < nfe[s] for w in worse)]
        part = f"{label}: "
        if lowest_ok:
            part += f"no significant loss down to {num(nfe[lowest_ok[-1]])} NFE"
        if worse:
            part += ("; " if lowest_ok else "") + "worse " + ", ".join(
                f"at {num(nfe[s])} NFE by {margin_of_b(comps[s], 'FID', len(comps))}"
                for s in worse)
        better = [s for s in ordered if comps[s].winner == s]
        if better:
            part += "; better at " + ", ".join(f"{num(nfe[s])} NFE" for s in better)
        sentences.append(part)
    return f"{head}, paired over seeds and Holm-adjusted over {len(comps)} comparisons: " + "; ".join(sentences)


def settings_front(evals: pd.DataFrame) -> pd.DataFrame:
    """The Pareto front of mean NFE against mean FID over settings (columns setting, nfe, fid)."""
    per = evals.groupby("setting", as_index=False, sort=False)[["nfe", "fid"]].mean()
    return pareto_front(per, minimize=("nfe", "fid")).sort_values("nfe")


# -- guidance ---------------------------------------------------------------------------------------

def guidance_answer(evals: pd.DataFrame) -> str:
    """Best w by class accuracy, the smallest w not significantly below it, and what FID does."""
    e = evals[evals["class_accuracy"].notna()].assign(w=lambda d: d["guidance"].map("w = {:g}".format))
    ws = list(dict.fromkeys(e.sort_values("guidance")["w"]))
    if len(ws) < 2:
        return "guidance does not vary"
    by_acc = ranked(e, "class_accuracy", "w", ws)
    best = by_acc[0]
    acc = estimate(e.loc[e["w"] == best, "class_accuracy"])
    by_fid = ranked(e, "fid", "w", ws)
    fid_best = estimate(e.loc[e["w"] == by_fid[0], "fid"])
    per = e.groupby("w", as_index=False, sort=False)[["fid", "class_accuracy"]].mean()
    front = ", ".join(pareto_front(per, minimize=("fid",), maximize=("class_accuracy",))["w"])
    if per["class_accuracy"].nunique() == 1:  # "highest at w = 0" would crown the first of equals
        text = f"class accuracy is {num(acc.mean)} at every w"
    else:
        text = f"class accuracy is highest at {best} ({with_ci(acc.mean, acc.low, acc.high)})"
    text += f"; FID is lowest at {by_fid[0]} ({with_ci(fid_best.mean, fid_best.low, fid_best.high)})"
    if e.groupby("w")["seed"].nunique().min() < 2:
        values = "; ".join(f"{r.w}: class accuracy {num(r.class_accuracy)}, FID {num(r.fid)}" for r in per.itertuples())
        return (f"{text}. One seed only, so no tests: {values}. Pareto-optimal (FID against class accuracy): {front}")
    comps = compare_to_reference(e, "class_accuracy", best, [w for w in ws if w != best], by="w", lower_is_better=False)
    tied = [c.a for c in comps if c.winner is None]
    pick = next(w for w in ws if w == best or w in tied)  # ws are in increasing w
    text += (f". Weights with {NO_DIFFERENCE} in class accuracy from {best}: {', '.join(tied) if tied else 'none'} "
             f"(paired over seeds, Holm-adjusted over {len(comps)} comparisons)")
    if pick != best:
        c = compare(e, "fid", pick, best, by="w", lower_is_better=True)
        text += (f". The smallest such weight, {pick}, is not significantly below {best} in class accuracy; on FID "
                 f"{comparison_sentence(c, 'FID')}")
    return f"{text}. Pareto-optimal (FID against class accuracy): {front}"
