"""When does a curve reach a threshold and stay there ("after how many steps do digits become
recognizable?"), with first-crossing times treated as censored data.

Evaluations are a grid, so a run's crossing time T is only known to lie in an interval (lo, hi]: hi is the
first evaluation at or above the threshold after which every later evaluation stays there, lo the
evaluation before it (None: hi is the first evaluation, so T is only "at or before hi"). A curve that rises
above and falls back below does not count at that step. A run that ends below the threshold has not
crossed within its budget: T > its last evaluation (right-censored), never "left out".

The median over seeds is the Kaplan-Meier one: the smallest t with at least half of the seeds crossed by t,
i.e. the ceil(n/2)-th smallest T (the lower median for even n, never an average of two steps that may never
have been evaluated). Censored seeds count as beyond the budget, so the median itself can be "not within
this budget". Order statistics are monotone, so T_(k) lies in (lo_(k), hi_(k)] (the k-th smallest lo and
hi), whatever grid each seed was evaluated on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .families import first_setting
from .load import AblationData
from .render import Table
from .words import and_list, num

METRIC = "recognizability"


@dataclass(frozen=True)
class Crossing:
    """One run's crossing of a threshold, in the units of the evaluation grid it was computed on."""

    lo: float | None  # last evaluation below the threshold before the final stay at or above (None: none)
    hi: float | None  # first evaluation of that stay; None: not within the budget (T > lo = last)
    last: float  # the last evaluation: how long a censored run was watched
    fell_back: bool  # at or above at some evaluation before lo, then below again: not counted there


@dataclass(frozen=True)
class Median:
    """The median crossing time over seeds lies in (lo, hi]; hi None: not within the budget (beyond lo)."""

    lo: float | None
    hi: float | None
    n: int  # seeds
    reached: int  # seeds that crossed and stayed


def first_crossing(at, values, threshold: float) -> Crossing | None:
    """The crossing of ``values`` (at evaluations ``at``) that stays at or above ``threshold``; None
    without a finite evaluation (a NaN is no observation, not a value below the threshold)."""
    at, values = np.asarray(at, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(values) & np.isfinite(at)
    order = np.argsort(at[keep], kind="stable")
    at, above = at[keep][order], values[keep][order] >= threshold
    if not len(at):
        return None
    below = np.flatnonzero(~above)
    k = int(below[-1]) + 1 if len(below) else 0  # start of the final stretch at or above
    return Crossing(
        lo=float(at[k - 1]) if k else None,
        hi=float(at[k]) if k < len(at) else None,
        last=float(at[-1]),
        fell_back=bool(above[:k].any()),
    )


def censored_median(cells: list[Crossing]) -> Median:
    """The Kaplan-Meier median of the crossing times (module docstring), censored seeds beyond the budget."""
    n = len(cells)
    if not n:
        return Median(None, None, 0, 0)
    k = (n + 1) // 2  # 1-based rank of the lower median
    his = sorted(math.inf if c.hi is None else c.hi for c in cells)
    los = sorted(-math.inf if c.lo is None else c.lo for c in cells)
    lo, hi = los[k - 1], his[k - 1]
    return Median(
        lo=None if lo == -math.inf else lo,
        hi=None if hi == math.inf else hi,
        n=n,
        reached=sum(c.hi is not None for c in cells),
    )


# -- per run ------------------------------------------------------------------------------------------

RUN_COLUMNS = ["run_id", "arm_label", "seed", "lo", "hi", "last", "lo_step", "hi_step", "last_step", "fell_back"]
RUN_COLUMNS += ["logged", "reused", "threshold", "unit"]


def recognizable_steps(data: AblationData, setting: str) -> pd.DataFrame:
    """Per training run, in plan order of arms and ascending seeds, the crossing of recognizability over the
    run's ``eval.recognizable_fraction`` with ``setting``: ``lo``, ``hi``, ``last`` (Crossing) in the report's
    unit (step or epoch: ``AblationData.unit``) and as ``*_step`` in training steps; ``logged``: whether the
    run logged periodic evaluations here at all (else the crossing columns are NaN)."""
    curve = data.curves[(data.curves["setting"] == setting) & (data.curves["metric"] == METRIC)]
    rows = []
    for run in data.runs.itertuples():
        mine = curve[curve["run_id"] == run.run_id]
        c = first_crossing(mine["step"], mine["value"], run.recognizable_fraction)
        rows.append(
            {
                "run_id": run.run_id,
                "arm_label": run.arm_label,
                "seed": run.seed,
                "lo_step": None if c is None else c.lo,
                "hi_step": None if c is None else c.hi,
                "last_step": None if c is None else c.last,
                "fell_back": c is not None and c.fell_back,
                "logged": c is not None,
                "reused": not run.has_history,
                "threshold": run.recognizable_fraction,
                "unit": data.unit,
            }
        )
    df = pd.DataFrame(rows, columns=[c for c in RUN_COLUMNS if c not in ("lo", "hi", "last")])
    for col in ("lo", "hi", "last"):
        df[f"{col}_step"] = df[f"{col}_step"].astype(float)
        df[col] = data.to_unit(df, f"{col}_step")
    order = {a: i for i, a in enumerate(data.arms)}
    df = df[RUN_COLUMNS].sort_values(["arm_label", "seed"], key=lambda c: c.map(order) if c.name == "arm_label" else c)
    return df.reset_index(drop=True)


def _cells(runs: pd.DataFrame, suffix: str = "") -> list[Crossing]:
    nan = lambda x: None if pd.isna(x) else float(x)  # noqa: E731
    return [
        Crossing(nan(r[f"lo{suffix}"]), nan(r[f"hi{suffix}"]), float(r[f"last{suffix}"]), bool(r["fell_back"]))
        for _, r in runs.iterrows()
    ]


def when(lo: float | None, hi: float, unit: str) -> str:
    """'between step 500 and 1,000', or 'at or before step 500, the first evaluation'."""
    if lo is None:
        return f"at or before {unit} {num(hi)}, the first evaluation"
    return f"between {unit} {num(lo)} and {num(hi)}"


def crossing_table(steps: pd.DataFrame, unit: str) -> Table:
    """One row per run: where its crossing lies between two evaluations, or why there is none."""

    def cell(r) -> str:
        if not r.logged:
            return "not logged here"
        if pd.isna(r.hi):
            text = f"not by {num(r.last)} (the last evaluation)"
        else:
            text = when(None if pd.isna(r.lo) else r.lo, r.hi, unit).replace(f"{unit} ", "")
        return text + ("; reached earlier and fell back below" if r.fell_back else "")

    header = ["arm", "seed", f"{unit} at which recognizability reached the threshold and stayed"]
    return Table(header, [[r.arm_label, r.seed, cell(r)] for r in steps.itertuples()])


# -- words ------------------------------------------------------------------------------------------


def _arm_phrase(cells: list[Crossing], m: Median, unit: str) -> str:
    """'between step 500 and 1,000 (median of 3 seeds, ...) with {arms}' for one arm's seeds."""
    if m.hi is None:
        budget = "not within this budget with {arms}"
        if not m.reached:
            return budget
        return f"{budget} ({m.reached} of {m.n} seeds reached it and stayed, the median seed not by {unit} {num(m.lo)})"
    his = sorted(c.hi for c in cells if c.hi is not None)
    if m.n == 1:
        notes = ["1 seed: an observation, not an estimate"]
    elif m.reached == m.n and len({(c.lo, c.hi) for c in cells}) == 1:
        notes = [f"all {m.n} seeds"]
    else:
        notes = [f"median of {m.n} seeds"]
        if m.reached < m.n:
            others = "the others" if m.n - m.reached > 1 else "the other"
            notes.append(f"{m.reached} of {m.n} reached it and stayed, {others} not within this budget")
        elif his[0] != his[-1]:
            notes.append(f"the seeds by {unit} {num(his[0])} to {num(his[-1])}")
        if m.n % 2 == 0:
            notes.append(f"the lower median: the first evaluation by which half of the {m.n} seeds had")
    if m.hi >= max(c.last for c in cells):  # one evaluation at or above: staying there is not observed
        notes.append("at the last evaluation, so whether it stays is not seen")
    return f"{when(m.lo, m.hi, unit)} ({'; '.join(notes)}) with {{arms}}"


def _sooner(a: list[Crossing], b: list[Crossing]) -> bool:
    """Every seed of ``a`` crossed no later than every seed of ``b``: max hi of a <= min lo of b."""
    return (
        all(c.hi is not None for c in a)
        and all(c.lo is not None for c in b)
        and max(c.hi for c in a) <= min(c.lo for c in b)
    )


def recognizable_answer(steps: pd.DataFrame, arms: list[str], setting: str) -> str:
    """'digits become recognizable (recognizability reaches 0.8 with S and stays there) between step 500 and
    1,000 (all 3 seeds) with cosine; ...': the censored median per arm (module docstring), in the report's unit."""
    if steps.empty or not steps["logged"].any():
        why = (
            ": its training runs resumed checkpoints that another experiment had already finished"
            if steps["reused"].any()
            else ""
        )
        return f"recognizability over training was not logged in this experiment{why}"
    threshold, unit = steps["threshold"].iloc[0], steps["unit"].iloc[0]
    phrases: dict[str, list[str]] = {}  # phrase -> arms, so arms that agree share one phrase
    soonest: dict[str, float] = {}  # phrase -> its median's hi, to list the soonest first
    cells, fell = {}, []
    for arm in [a for a in arms if a in set(steps["arm_label"])]:
        mine = steps[(steps["arm_label"] == arm) & steps["logged"]]
        if mine.empty:
            phrases.setdefault("unknown for {arms} (no periodic evaluations logged here)", []).append(arm)
            continue
        cells[arm] = _cells(mine)
        m = censored_median(cells[arm])
        phrase = _arm_phrase(cells[arm], m, unit)
        phrases.setdefault(phrase, []).append(arm)
        if m.hi is not None:
            soonest[phrase] = m.hi
        if n := sum(c.fell_back for c in cells[arm]):
            fell.append(f"{n} of {len(mine)} seeds of {arm}")
    text = f"digits become recognizable (recognizability reaches {threshold:g} with {setting} and stays there) "
    text += "; ".join(
        p.format(arms=and_list(a))
        for p, a in sorted(
            phrases.items(),
            key=lambda pa: (0 if pa[0] in soonest else 1 if pa[0].startswith("not") else 2, soonest.get(pa[0], 0)),
        )
    )
    if len(cells) == 2:
        (a, ca), (b, cb) = cells.items()
        one = " (one seed: an observation, not a test)" if min(len(ca), len(cb)) == 1 else ""
        if _sooner(ca, cb) != _sooner(cb, ca):
            text += f"; {a if _sooner(ca, cb) else b} is sooner in every seed{one}"
        elif len({(c.lo, c.hi) for c in ca + cb}) == 1 and ca[0].hi is not None:
            text += f"; both reach it at the same evaluation{one}"
        elif any(c.hi is not None for c in ca + cb):
            text += "; neither is sooner in every seed"
    if fell:
        text += (
            f"; in {and_list(fell)} recognizability reached the threshold earlier and fell back below it, "
            f"which does not count as recognizable"
        )
    return text


# -- answers.json ------------------------------------------------------------------------------------------


def crossing_entries(data: AblationData) -> list[dict]:
    """The "when does it become recognizable" entries of answers.json, one per arm, in training steps:
    ``median_step`` (null: not within this budget), ``interval`` [lo, hi] that the median crossing lies in
    ((lo, hi]; lo null: at or before the first evaluation; hi null: beyond lo, not within the budget),
    ``seeds_reached`` (crossed and stayed), ``seeds_total`` (seeds with periodic evaluations here),
    ``reason`` (null when the median is an estimate over 2+ seeds; else why there is none, or the caveat)."""
    setting = first_setting(data)
    if setting is None:
        return []
    steps = recognizable_steps(data, setting)
    entries = []
    for arm in data.arms:
        runs = steps[steps["arm_label"] == arm]
        mine = runs[runs["logged"]]
        m = censored_median(_cells(mine, "_step"))
        last = mine["last_step"].max() if len(mine) else math.nan
        if runs.empty:
            reason = "no finished training run"
        elif mine.empty:
            reason = "no periodic evaluations logged" + (
                " (its runs resumed checkpoints another experiment had finished)" if runs["reused"].any() else ""
            )
        elif m.hi is None:
            reason = f"not within this budget: {m.reached} of {m.n} seeds reached it and stayed by step {num(last)}"
        elif m.n == 1:
            reason = "1 seed: an observation, not an estimate"
        else:
            reason = None
        threshold = float(runs["threshold"].iloc[0]) if len(runs) else None
        entries.append(
            {
                "metric": METRIC,
                "arm": arm,
                "setting": setting,
                "threshold": threshold,
                "median_step": None if m.hi is None else int(m.hi),
                "interval": [None if m.lo is None else int(m.lo), None if m.hi is None else int(m.hi)],
                "seeds_reached": [int(s) for s in mine.loc[mine["hi_step"].notna(), "seed"]],
                "seeds_total": int(m.n),
                "reason": reason,
            }
        )
    return entries
