"""The report's "Against the literature": each entry of the spec's ``literature`` section, its published
figures, our values with their intervals, and a verdict.

Every expectation is reduced to directional comparisons of two selections over seeds (``stats.compare``:
paired t when both have the same seeds, else Welch), Holm-adjusted within the expectation:

- direction: one comparison. *agrees* when ``better`` wins (adjusted p < alpha, interval on its side of 0),
  *disagrees* when ``than`` wins, else *cannot tell*;
- monotone: each step along the field, plus the ends. *disagrees* when a step goes significantly the other
  way; *agrees* when the ends differ significantly the claimed way and no step goes against it. With
  ``flattens_after`` x*, the per-seed gain up to x* is also tested against the gain beyond it (paired t):
  both must agree for *agrees*, either disagreeing is *disagrees*;
- ordering: each neighbouring pair of the order; *agrees* when every pair goes the claimed way
  significantly, *disagrees* when one goes against it;
- equivalent: TOST within ``margin`` (``verdicts.tost``) *agrees*; an interval wholly outside the margin
  *disagrees*.

*Cannot tell* says what budget could: the minimum detectable effect of this design and the seeds per arm
that would detect the difference we saw with 80% power (``analysis/power.py``), or, with one seed, that a
test needs two. Published figures are shown, never compared: their data, features and scale are not ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from harness.config.literature import Direction, Entry, Equivalent, Monotone, same
from harness.config.schema import RUN_METRICS
from harness.config.setting import SamplerSetting

from .load import AblationData
from .power import comparison_mde, comparison_seeds
from .render import Section, Table
from .stats import ALPHA, Comparison, compare, holm_family
from .verdicts import sampling_noise, tost, with_sampling_noise
from .words import estimate_words, metric_label, num, pval

AGREES, DISAGREES, CANNOT_TELL, NOT_CHECKED = "agrees", "disagrees", "cannot tell at this budget", "not checked"


@dataclass
class Check:
    """The verdict on one entry: ``ours`` our values in words, ``statistics`` the tests behind the verdict,
    ``budget`` (cannot tell) what design could decide it."""

    entry: Entry
    verdict: str
    ours: list[str] = field(default_factory=list)
    statistics: list[str] = field(default_factory=list)
    budget: str = ""
    comparisons: list[Comparison] = field(default_factory=list)

    def to_dict(self) -> dict:
        src = self.entry.source
        return {
            "question": "literature",
            "source": f"{src.authors} ({src.year}), {src.where}",
            "claim": self.entry.claim,
            "kind": self.entry.expect.kind if self.entry.expect else None,
            "metric": self.entry.expect.metric if self.entry.expect else None,
            "verdict": self.verdict,
            "ours": self.ours,
            "statistics": self.statistics,
            "budget": self.budget or None,
            "published": [f.model_dump() for f in self.entry.figures],
        }


def check(data: AblationData | None, entry: Entry) -> Check:
    """``data`` may be None where no entry has an ``expect`` (a sweep's)."""
    exp = entry.expect
    if exp is None:
        return Check(entry, NOT_CHECKED, budget=entry.unchecked)
    table = _table(data, exp.metric)
    try:
        if isinstance(exp, Monotone):
            return _monotone(entry, exp, table, data)
        if isinstance(exp, Equivalent):
            return _equivalent(entry, exp, _family([_pair(table, data, exp.metric, exp.a, exp.b, exp.lower)])[0])
        sels = [exp.better, exp.than] if isinstance(exp, Direction) else list(exp.order)
        comps = _family([_pair(table, data, exp.metric, a, b, exp.lower) for a, b in zip(sels, sels[1:])])
        return _all_pairs(entry, comps)
    except LookupError as err:
        return Check(entry, CANNOT_TELL, statistics=[str(err)])


# -- selections -----------------------------------------------------------------------------------------


def _table(data: AblationData, metric: str) -> pd.DataFrame:
    """One row per (run, setting) with ``metric``: the final evaluations, or the runs for a run metric."""
    return data.runs.assign(setting="") if metric in RUN_METRICS else data.evals


def _select(table: pd.DataFrame, data: AblationData, sel: dict, metric: str, along: str | None = None) -> pd.DataFrame:
    """The rows of one arm that ``sel`` picks, at the first setting (plan order) that it allows for each value
    of ``along``; a LookupError names what is missing or ambiguous."""
    rows = table[table[metric].notna()] if metric in table else table.iloc[0:0]
    for key, value in sel.items():
        if key not in rows:
            if metric in RUN_METRICS and key in SamplerSetting.model_fields:
                continue  # a run metric has no setting
            raise LookupError(f"{_name(sel)}: no column {key} in these results")
        rows = rows[rows[key].map(lambda v, value=value: same(value, v))]
    if rows.empty:
        raise LookupError(f"{_name(sel)}: no {metric_label(metric)} in these results")
    order = {s: i for i, s in enumerate(data.settings)}
    first = rows.assign(_o=rows["setting"].map(lambda s: order.get(s, len(order))))
    keys = [along] if along else []
    firsts = first.groupby(keys)["_o"].transform("min") if keys else first["_o"].min()
    rows = first[first["_o"] == firsts].drop(columns="_o")
    arms = sorted(set(rows["arm_label"]))
    if len(arms) > 1:
        raise LookupError(f"{_name(sel)} picks {len(arms)} arms ({', '.join(arms)}); name an axis to pick one")
    return rows


def _name(sel: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sel.items()) or "every evaluation"


def _pair(table, data, metric: str, a: dict, b: dict, lower: bool) -> Comparison:
    """``a`` against ``b`` on ``metric``, one value per seed each."""
    ra, rb = _select(table, data, a, metric), _select(table, data, b, metric)
    df = pd.concat([ra.assign(_g=_name(a)), rb.assign(_g=_name(b))])
    return compare(df, metric, _name(a), _name(b), by="_g", lower_is_better=lower), df


def _family(pairs: list[tuple[Comparison, pd.DataFrame]]) -> list[Comparison]:
    """Holm within the entry, then a FID difference also carries the FID's own sampling noise at this N at
    the adjusted level, as in the comparison table (``verdicts.with_sampling_noise``): a claim is not
    confirmed by a difference that one redraw of the N samples could undo."""
    comps = holm_family([c for c, _ in pairs])
    return [with_sampling_noise(c, sampling_noise(df.assign(arm_label=df["_g"]))) for c, (_, df) in zip(comps, pairs)]


# -- verdicts -------------------------------------------------------------------------------------------


def _all_pairs(entry: Entry, comps: list[Comparison]) -> Check:
    """Each comparison claims its first selection is the better: all winning agrees, one losing disagrees."""
    against = [c for c in comps if c.winner == c.b]
    if against:
        verdict = DISAGREES
    elif all(c.winner == c.a for c in comps):
        verdict = AGREES
    else:
        verdict = CANNOT_TELL
    undecided = [c for c in comps if c.winner is None]
    return Check(entry, verdict, _ours(comps), [_stat(c) for c in comps], _budget(undecided, verdict), comps)


def _monotone(entry: Entry, exp: Monotone, table: pd.DataFrame, data: AblationData) -> Check:
    rows = _select(table, data, exp.where, exp.metric, along=exp.along)
    xs = sorted(set(rows[exp.along]))
    if len(xs) < 2:
        raise LookupError(f"{_name(exp.where)}: one value of {exp.along} only")
    # Oriented so that each comparison claims "the one further along the claimed way is better".
    better_lower = exp.lower if exp.gets == "better" else not exp.lower
    per_x = {x: rows[rows[exp.along] == x].assign(_g=f"{exp.along}={num(x)}") for x in xs}
    pairs = [*zip(xs[1:], xs), (xs[-1], xs[0])] if len(xs) > 2 else [(xs[1], xs[0])]
    frames = [pd.concat([per_x[a], per_x[b]]) for a, b in pairs]
    comps = _family(
        [
            (compare(df, exp.metric, f"{exp.along}={num(a)}", f"{exp.along}={num(b)}", by="_g",
                     lower_is_better=better_lower), df)
            for (a, b), df in zip(pairs, frames)
        ]
    )  # fmt: skip
    steps, ends = comps[:-1] if len(xs) > 2 else comps, comps[-1]
    if any(c.winner == c.b for c in steps):
        verdict = DISAGREES
    elif ends.winner == ends.a:
        verdict = AGREES
    else:
        verdict = CANNOT_TELL
    stats = [_stat(c) for c in comps]
    if exp.flattens_after is not None:
        flat = _flattening(exp, per_x, xs, better_lower)
        if flat is not None:
            comps.append(flat)
            stats.append("flattening: " + _stat(flat))
            if flat.winner == flat.b:
                verdict = DISAGREES
            elif verdict == AGREES and flat.winner != flat.a:
                verdict = CANNOT_TELL
    undecided = [c for c in comps if c.winner is None]
    return Check(entry, verdict, _ours(comps[: len(pairs)]), stats, _budget(undecided, verdict), comps)


def _flattening(exp: Monotone, per_x: dict, xs: list, better_lower: bool) -> Comparison | None:
    """The per-seed gain from the first value to x* against the gain from x* to the last (gains signed so
    that positive is the claimed way): a paired t on seeds; None where x* is not strictly inside the range."""
    knee = next((x for x in xs if same(x, exp.flattens_after)), None)
    if knee is None or knee in (xs[0], xs[-1]):
        return None
    by_seed = {x: per_x[x].groupby("seed")[exp.metric].mean() for x in (xs[0], knee, xs[-1])}
    sign = -1.0 if better_lower else 1.0  # a fall in a lower-is-better metric is a gain
    up_to = sign * (by_seed[knee] - by_seed[xs[0]])
    beyond = sign * (by_seed[xs[-1]] - by_seed[knee])
    a, b = f"gain up to {exp.along}={num(knee)}", f"gain beyond {exp.along}={num(knee)}"
    df = pd.concat([up_to.rename("gain").reset_index().assign(_g=a), beyond.rename("gain").reset_index().assign(_g=b)])
    return compare(df.dropna(), "gain", a, b, by="_g", lower_is_better=False)


def _equivalent(entry: Entry, exp: Equivalent, c: Comparison) -> Check:
    p_eq = tost(c, exp.margin)
    d = c.diff
    outside = d.has_interval and (d.low > exp.margin or d.high < -exp.margin)
    verdict = AGREES if p_eq < ALPHA else DISAGREES if outside else CANNOT_TELL
    tested = pval(p_eq) if math.isfinite(p_eq) else "no test"
    stat = f"{_stat(c)}; equivalence within {num(exp.margin)} (TOST): {tested}"
    budget = ""
    if verdict == CANNOT_TELL:
        need = comparison_seeds(c, exp.margin)
        budget = (
            f"equivalence within {num(exp.margin)} needs about {need} seeds per arm" if need else _budget([c], verdict)
        )
    return Check(entry, verdict, _ours([c]), [stat], budget, [c])


# -- words ----------------------------------------------------------------------------------------------


def _ours(comps: list[Comparison]) -> list[str]:
    seen, out = set(), []
    for c in comps:
        for name, e in ((c.a, c.a_est), (c.b, c.b_est)):
            if name not in seen and not name.startswith("gain "):
                seen.add(name)
                out.append(f"{name}: {estimate_words(e)}")
    return out


def _stat(c: Comparison) -> str:
    d = c.diff
    diff = f"{c.a} minus {c.b} = {estimate_words(d)}"
    if c.test == "none":
        return f"{diff}; no test ({c.untested})"
    adj = f", Holm-adjusted over {c.family}: {pval(c.p)}" if c.family > 1 else ""
    side = "as claimed" if c.winner == c.a else "against the claim" if c.winner else "no significant difference"
    if c.winner is None and c.p < c.alpha:  # the seeds alone would decide; one redraw of the N samples could not
        side = "not significant once the FID's own sampling noise at this N is added (fid_se)"
    return f"{diff}; {c.test} {pval(c.p_raw)}{adj}: {side}"


def _budget(undecided: list[Comparison], verdict: str) -> str:
    if verdict != CANNOT_TELL or not undecided:
        return ""
    parts = []
    for c in undecided:
        if c.test == "none":
            parts.append(f"{c.a} vs {c.b}: {c.untested}, so no interval; a test needs at least 2 seeds per arm")
            continue
        need = comparison_seeds(c, abs(c.diff.mean))
        mde = comparison_mde(c)
        parts.append(
            f"{c.a} vs {c.b}: this design detects differences above {num(mde)}; the {num(abs(c.diff.mean))} seen "
            + (f"would need about {need} seeds per arm" if need else "is beyond any practical number of seeds")
            + " (80% power)"
        )
    return "; ".join(parts)


def literature_section(data: AblationData, entries: list[Entry]) -> Section | None:
    if not entries:
        return None
    intro = (
        "Each entry of the spec's literature section: the paper's claim, its published figures (their data, "
        "features and scale, shown beside ours, never compared with them), our values with 95% intervals over "
        "seeds, and a verdict from tests over seeds, Holm-adjusted within each entry, with a FID's own sampling "
        "noise at this N added as in the comparison table (docs/literature.md). A claim was stated before the "
        "data and is tested on its own, so its p can fall below 0.05 where the comparison table, adjusted over "
        "every pair and metric, finds no difference."
    )
    return checks_section(intro, [check(data, e) for e in entries])


def context_section(entries: list[Entry]) -> Section | None:
    """A sweep report's "Against the literature": a sweep has no arms to test a claim on (``harness validate``
    refuses an ``expect`` in a sweep spec), so each entry is shown as the context it is, with why."""
    if not entries:
        return None
    intro = (
        "Each entry of the spec's literature section, with the paper's claim and why this sweep does not test it: "
        "a sweep searches one configuration space and has no arms to compare, so the claims are context for "
        "reading the parameter slices and the trials above, not verdicts (docs/literature.md)."
    )
    return checks_section(intro, [check(None, e) for e in entries])


def checks_section(intro: str, checks: list[Check]) -> Section:
    s = Section("Against the literature")
    s.paragraphs.append(intro)
    rows = []
    for chk in checks:
        e, src = chk.entry, chk.entry.source
        published = "; ".join(f"{f.setting}: {f.value:g} ({f.metric})" for f in e.figures) or "none"
        decide = f"why not: {chk.budget}" if chk.verdict == NOT_CHECKED else f"would decide it: {chk.budget}"
        evidence = "; ".join(chk.statistics + ([decide] if chk.budget else []))
        rows.append(
            [
                f"{src.authors} ({src.year}), {src.where}",
                e.claim,
                published,
                "; ".join(chk.ours) or "n/a",
                chk.verdict,
                evidence or "n/a",
                e.differences,
            ]
        )
    header = ["source", "claim", "published", "ours", "verdict", "statistics", "their setting vs ours"]
    s.tables.append(Table(header, rows, "Where the figures come from and how they were checked: docs/literature.md."))
    return s


def literature_answers(data: AblationData, entries: list[Entry]) -> list[dict]:
    """answers.json entries: one per literature entry (``Check.to_dict``)."""
    return [check(data, e).to_dict() for e in entries]
