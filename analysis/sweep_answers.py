"""A sweep's answer in words: the confirmed best configuration when it beats every other confirmed trial (else
that the confirmations single out none), or the search's best trial marked unconfirmed; a caveat when the
best lies at the edge of the searched range."""

from __future__ import annotations

import math

import pandas as pd

from harness.config.schema import arm_text, spread_key

from .opening import _plural
from .stats import compare_to_reference, metric_estimate
from .sweep_load import SweepData, ranked_trials, trial_row
from .words import comparison_sentence, metric_label, num, seeds, swap, with_ci

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}  # Optuna's -> words


# -- words ------------------------------------------------------------------------------------------------


def config_text(data: SweepData, row) -> str:
    """A trial's sampled values: 'train.lr=0.00123, model.channels=16'."""
    values = {k: row[k] for k in data.params if k in row.index and pd.notna(row[k])}
    return arm_text({k: _value(v) for k, v in values.items()})


def _value(text) -> str:
    try:
        return num(float(text))
    except (TypeError, ValueError):
        return str(text)


def counts(data: SweepData) -> dict[str, int]:
    states = data.trials["state"].value_counts()
    return {s: int(states.get(s, 0)) for s in STATES} | {"total": len(data.trials)}


def trial_counts(data: SweepData) -> str:
    c = counts(data)
    parts = [f"{c[s]} {word}" for s, word in STATES.items() if c[s] or s != "RUNNING"]
    target = f" of {data.n_trials} planned" if data.n_trials else ""
    return f"{_plural(c['total'], 'trial')}{target} ({', '.join(parts)})"


def search_value(data: SweepData, row, metric: str | None = None) -> str:
    """A trial's objective as the search measured it: '38.1 (mean of 2 seeds, std 1.2)'."""
    metric = metric or data.objective.metric
    if pd.isna(row[metric]):
        return "no value recorded"
    spread = row[spread_key(metric)]
    n = int(row["n_seeds"])
    over = f"{data.aggregate} of {seeds(n)}" if n > 1 else "1 seed"
    return f"{num(row[metric])} ({over}" + (f", std {num(spread)})" if pd.notna(spread) else ")")


def confirmed_table(data: SweepData) -> pd.DataFrame:
    """Per confirmed trial: its rank in the search, n, mean, low, high of the objective over its fresh seeds,
    best confirmed mean first."""
    o = data.objective
    c = data.confirms
    if c.empty or o.metric not in c or c[o.metric].isna().all():
        return pd.DataFrame(columns=["trial", "rank", "arm_label", "n", "mean", "low", "high"])
    rows = []
    for trial, group in c.groupby("trial"):
        e = metric_estimate(group[o.metric], o.metric)
        rank = group["rank"].dropna()
        rows.append(
            {
                "trial": trial,
                "rank": int(rank.iloc[0]) if len(rank) else None,
                "arm_label": f"trial {trial}",
                "n": e.n,
                "mean": e.mean,
                "low": e.low,
                "high": e.high,
            }
        )
    out = pd.DataFrame(rows)
    return out[out["n"] > 0].sort_values(["mean", "trial"], ascending=[o.lower_is_better, True]).reset_index(drop=True)


def answer(data: SweepData) -> str:
    """The opening paragraph: the confirmed best and whether it beats the runner-up, or the search's best
    trial plainly marked as unconfirmed."""
    o, unit = data.objective, metric_label(data.objective.metric)
    head = f"Study {data.study} ({data.profile} profile), {trial_counts(data)}"
    multi = (
        f"; the study has {len(data.objectives)} objectives ({', '.join(x.metric for x in data.objectives)}), "
        f"and this answer ranks by the first, {unit} ({o.direction})"
        if len(data.objectives) > 1
        else ""
    )
    running = (
        f". The sweep's parent run is {data.parent_status}: this is the state so far"
        if data.parent_status != "FINISHED"
        else ""
    )
    ranked = ranked_trials(data)
    if ranked.empty:
        return f"{head}{multi}: no trial completed, so there is no best configuration to report{running}."
    confirmed = confirmed_table(data)
    if confirmed.empty:
        edge = edge_sentence(data, trial_row(data, ranked.iloc[0]["trial"]))
        words = unconfirmed_words(data, ranked, unit)
        return head + multi + ": " + words + running + "." + (f" {edge}" if edge else "")
    best = confirmed.iloc[0]
    row = trial_row(data, best["trial"])
    order = list(ranked["trial"])
    rank = (
        f"rank {order.index(best['trial']) + 1} of {len(ranked)} complete trials"
        if best["trial"] in order
        else f"not among the {len(ranked)} complete trials"
    )
    measured = (
        f"trial {best['trial']} ({config_text(data, row)}), {unit} {with_ci(best['mean'], best['low'], best['high'])} "
        f"over {best['n']} fresh confirmation seed{'s' if best['n'] != 1 else ''}; in the search: "
        f"{search_value(data, row)}, {rank}"
    )
    comps = confirmation_comparisons(data, confirmed)
    lead = f"{head}{multi}: "
    if not comps:
        text = f"{lead}the only confirmed trial is {measured}; there is no other confirmed trial to compare it with, "
        text += "so this re-measures the search's pick rather than confirming a best"
    elif all(c.winner == best["arm_label"] for c in comps):
        text = f"{lead}the confirmed best configuration is {measured}. Against the other confirmed trials: "
        text += "; ".join(comparison_sentence(swap(c), unit, len(comps)) for c in comps)
    else:
        text = (
            f"{lead}the confirmations single out no best configuration (the best confirmed mean does not beat every "
            f"other confirmed trial): the {'lowest' if o.lower_is_better else 'highest'} is {measured}; "
        )
        text += "; ".join(_against(c, unit, len(comps)) for c in comps)
    edge = edge_sentence(data, row)
    return text + running + "." + (f" {edge}" if edge else "")


def confirmation_comparisons(data: SweepData, confirmed: pd.DataFrame) -> list:
    """The best confirmed trial against every other confirmed one, paired over the confirmation seeds where
    they share them, Holm-adjusted over the k - 1 comparisons. The best of k re-measurements is selected
    again, so it is called the best only when it beats every other one. Under the null (k equal trials) that
    names a false winner in 4.6% of studies at k = 2, 0.47% at k = 3 and 0.07% at k = 5 (1,500 simulated
    studies each, 3 seeds, tests/test_sweep_confirmation.py): conservative for k > 2, at the price of power."""
    if len(confirmed) < 2:
        return []
    o = data.objective
    labels = list(confirmed["arm_label"])
    return compare_to_reference(data.confirms, o.metric, labels[0], labels[1:], lower_is_better=o.lower_is_better)


def _against(c, unit: str, family: int) -> str:
    """Another confirmed trial (``c.a``) against the best (``c.b``) in words."""
    if c.test == "none":
        return f"the difference from {c.a} ({unit} {num(c.a_est.mean)}) cannot be tested ({c.untested})"
    return comparison_sentence(swap(c), unit, family)


EDGE = 0.05  # within 5% of a bound (of the log range for log-scale params): the optimum may lie outside


def edge_sentence(data: SweepData, row) -> str | None:
    """Names the best configuration's values at the edge of their searched range: a search cannot say what
    lies beyond its bounds, so "best" there may only mean "best inside the box"."""
    near = []
    for key, spec in data.space.items():
        if "low" not in spec or key not in row or pd.isna(row[key]):
            continue
        low, high, value = float(spec["low"]), float(spec["high"]), float(row[key])
        scale = math.log if spec.get("log") else (lambda v: v)
        span = scale(high) - scale(low)
        if span <= 0:
            continue
        where = (scale(value) - scale(low)) / span
        if where <= EDGE or where >= 1 - EDGE:
            end = "lower" if where <= EDGE else "upper"
            near.append(f"{key} = {num(value)} at the {end} end of its range ({num(low)} to {num(high)})")
    if not near:
        return None
    return (
        f"The best configuration has {'; '.join(near)}: the optimum may lie outside the searched range, so "
        f"widen it before reading this as the best the design can do."
    )


def unconfirmed_words(data: SweepData, ranked: pd.DataFrame, unit: str) -> str:
    """The search's best (a multi-objective study: its Pareto-optimal trials), marked optimistic and unconfirmed."""
    front = data.trials[data.trials["best"]] if len(data.objectives) > 1 else ranked.head(1)
    many = len(front) > 1
    if len(data.objectives) > 1:
        lead = f"{_plural(len(front), 'trial')} {'are' if many else 'is'} Pareto-optimal in the search: " + "; ".join(
            f"trial {r['trial']} ({config_text(data, r)}: "
            + ", ".join(f"{metric_label(o.metric)} {num(r[o.metric])}" for o in data.objectives)
            + ")"
            for _, r in front.iterrows()
        )
    else:
        row = front.iloc[0]
        lead = f"the search's best trial is trial {row['trial']} ({config_text(data, row)}), "
        lead += f"{unit} {search_value(data, row)}"
    they, these = ("they are", "these configurations") if many else ("it is", "this configuration")
    return (
        f"{lead}. {'These are' if many else 'This is'} the best of {len(ranked)} noisy trial values, so {they} "
        f"optimistic: picking the best of noisy values also picks favourable noise (the winner's curse), and {they} "
        f"unconfirmed: no run re-trained {these} with fresh seeds"
    )


# -- sections ---------------------------------------------------------------------------------------------
