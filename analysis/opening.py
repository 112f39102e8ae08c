"""The opening paragraph: the answer to the spec's question, computed from the tables, with every caveat
a reader needs first (failures lead, then the answer, then what it rests on)."""

from __future__ import annotations

import math

import pandas as pd

from . import matched
from .answers import arms_answer, guidance_answer, recognizable_answer, recognizable_steps, settings_answer
from .caveats import (
    code_sentence,
    curve_sentence,
    failed_arms,
    failure_sentence,
    fid_bases,
    fid_refusal,
    heun_sentence,
    objective_groups,
    periodic,
)
from .families import (
    classifier_family,
    first_setting,
    guidance_family,
    sampler_family,
    varies_classifier,
    varies_guidance,
    varies_sampler,
)
from .load import AblationData
from .stats import metric_estimate
from .verdicts import family, shared_setting
from .words import and_list, metric_label, num, pval

# -- the paragraph ------------------------------------------------------------------------------------


SMOKE = "Smoke profile: this run checks the pipeline and answers nothing."


def answer(data: AblationData, *, margins: dict[str, float] | None = None) -> str:
    """The answer to the spec's question: one bold sentence (the verdict), then the details; on a plan with
    failures the first detail says so. Comparisons of arms come from ``verdicts.family`` (one family)."""
    fam = family(data, margins=margins)
    body = details(data, fam)
    head = SMOKE if data.profile == "smoke" else headline(data, body, fam)
    body = [b for b in body if b.rstrip(".") + "." != head]  # a detail that became the verdict is said once
    return f"**{head}** {' '.join(body)}"


def headline(data: AblationData, body: list[str], fam: list) -> str:
    """The verdict in one sentence: the FID comparison of the arms (the first answer sentence otherwise)."""
    if data.runs.empty or data.evals.empty:
        return "No answer yet: no finished training run with evaluations."
    fid = [v for v in fam if v.metric == "fid"]
    untested = bool(fid) and all(v.comparison is not None and v.comparison.test == "none" for v in fid)
    when = next((b for b in body if b.startswith("Digits become recognizable")), None)
    if untested and when:  # no FID verdict to give, but the curves answer "when does it become recognizable?"
        return when.rstrip(".") + "."
    if fid:
        return _fid_headline(fid)
    # The answer proper: not the failures (a detail of their own), nor the model's progress before guidance.
    skip = ("This plan has failures", "Digits become recognizable", "Recognizability over training")
    first = next((b for b in body if not b.startswith(skip)), body[0])
    return _first_clause(first).rstrip(".") + "."


def _first_clause(text: str) -> str:
    """``text`` up to its first '; ' outside parentheses."""
    depth = 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and text.startswith("; ", i):
            return text[:i]
    return text


def _fid_headline(fid: list) -> str:
    winners = [v.winner for v in fid if v.winner]
    losers = {a for v in fid if v.winner for a in v.compared if a != v.winner}
    arms = {a for v in fid for a in v.compared}
    unbeaten = [w for w in dict.fromkeys(winners) if w not in losers]
    if len(unbeaten) == 1 and losers | {unbeaten[0]} == arms:
        return f"{unbeaten[0]} has the best FID: it beats every other arm, after adjustment for multiple comparisons."
    if winners:
        pairs = "; ".join(f"{v.winner} beats {[a for a in v.compared if a != v.winner][0]}" for v in fid if v.winner)
        return f"On FID, {pairs}; the other pairs show no significant difference."
    if all(v.comparison is None for v in fid):
        return "FIDs are not ranked: " + fid[0].reason.removeprefix("refused: ") + "."
    if all(v.comparison is None or v.comparison.test == "none" for v in fid):
        return "No FID difference is tested (too few seeds or identical values), so no arm is called better."
    return "No significant FID difference between the arms at this budget."


def details(data: AblationData, fam: list) -> list[str]:
    """The sentences after the headline."""
    sentences = [s for s in (failure_sentence(data),) if s]
    if data.runs.empty or data.evals.empty:
        nothing = "No finished training run with evaluations in this experiment yet, so there is no answer."
        return [*sentences, nothing]
    setting = first_setting(data)
    reasons = failed_arms(data)
    recognizable = _cap(recognizable_answer(recognizable_steps(data, setting), data.arms, setting)) + "."
    if len(data.arms) > 1 and matched.disjoint(data):  # each arm sampled with its own settings: meet by NFE
        sentences += matched.matched_sentences(data, _comps(fam, "fid"))
        sentences += loss_sentences(data, reasons, fam)
        sentences.append(recognizable)
    elif len(data.arms) > 1:
        shared = shared_setting(data)
        at = data.evals[data.evals["setting"] == shared]
        sentences.append(fid_sentence(data, at, shared, reasons, fam))
        sentences += [s for s in (equivalence_sentence(fam), other_metrics_sentence(fam), design_sentence(fam)) if s]
        sentences += loss_sentences(data, reasons, fam)
        sentences.append(recognizable)
        if others := [x for x in data.settings if x != setting and not varies_guidance(data)]:
            sentences.append(f"The other evaluation settings ({', '.join(others)}) are in the tables below.")
    if len(data.arms) == 1 and varies_guidance(data) and periodic(data):
        sentences.append(recognizable)  # the model's progress first, then what guidance changes
    if varies_guidance(data):
        fam = guidance_family(data)
        for arm in [a for a in data.arms if a in set(fam["arm_label"])]:
            words = guidance_answer(fam[fam["arm_label"] == arm])
            sentences.append((f"For {arm}: {words}" if len(data.arms) > 1 else _cap(words)) + ".")
    if varies_classifier(data):  # classifier guidance (Dhariwal & Nichol): the scale s, any model
        fam = classifier_family(data)
        for arm in [a for a in data.arms if fam.loc[fam["arm_label"] == a, "classifier_scale"].nunique() > 1]:
            words = guidance_answer(fam[fam["arm_label"] == arm], knob="classifier_scale", symbol="s")
            sentences.append(f"Classifier guidance{f' of {arm}' if len(data.arms) > 1 else ''}: {words}.")
    if varies_sampler(data) and len(data.arms) == 1:
        fam = sampler_family(data)
        refusal = fid_refusal(fam, data.runs)
        sentences.append(_cap(refusal or settings_answer(fam)) + ".")
    if len(data.arms) == 1 and not varies_guidance(data) and not varies_sampler(data):
        e = metric_estimate(data.evals.loc[data.evals["setting"] == setting, "fid"], "fid")
        fid = f"FID {num(e.mean) if e.n else 'not recorded'}" + (
            f" (95% CI {num(e.low)} to {num(e.high)})" if e.has_interval else ""
        )
        sentences += [f"There is one arm and one setting, so nothing is compared: {fid} with {setting}.", recognizable]
    sentences += [s for s in (heun_sentence(data.evals, data.runs), code_sentence(data), curve_sentence(data)) if s]
    sentences.append(budget_sentence(data))
    return sentences


def _comps(fam: list, metric: str, question: str | None = None) -> list:
    return [v.comparison for v in fam if v.metric == metric and v.comparison and question in (None, v.question)]


def equivalence_sentence(fam: list) -> str | None:
    """The spec's margins (TOST): 'cosine and linear are equivalent within 2 FID (TOST p = 0.003)', or not shown."""
    parts = []
    for v in [v for v in fam if v.margin is not None and v.comparison is not None and v.comparison.test != "none"]:
        a, b = v.compared
        within = f"{num(v.margin)} {metric_label(v.metric)}"
        if v.reason == "equivalent within margin":
            parts.append(f"{a} and {b} are equivalent within {within} (TOST {pval(v.p_equivalence)})")
        elif not v.winner:
            parts.append(f"{a} and {b} are not shown equivalent within {within} (TOST {pval(v.p_equivalence)})")
    return ("Against the spec's margins, adjusted in the same family: " + "; ".join(parts) + ".") if parts else None


def other_metrics_sentence(fam: list) -> str | None:
    """The significant pairs on the metrics other than FID and the loss, adjusted in the same family."""
    wins = [v for v in fam if v.metric not in ("fid", "final_loss") and v.winner]
    if not wins:
        return None
    size = max(v.comparison.family for v in wins)
    return (
        f"On the other metrics (adjusted in the same family of {size} comparisons): "
        + "; ".join(
            f"{metric_label(v.metric)}: {v.winner} better than {[a for a in v.compared if a != v.winner][0]}"
            for v in wins
        )
        + "; every other pair is not significant or not tested (the table below gives each)."
    )


def design_sentence(fam: list) -> str | None:
    """What the FID comparisons could have detected: 'with 3 seeds this design detects FID differences
    above 14 (80% power at the level used)'."""
    tested = [v for v in fam if v.metric == "fid" and math.isfinite(v.mde)]
    if not tested:
        return None
    n = sorted({min(v.comparison.a_est.n, v.comparison.b_est.n) for v in tested})
    lo, hi = min(v.mde for v in tested), max(v.mde for v in tested)
    size = num(lo) if num(lo) == num(hi) else f"{num(lo)} to {num(hi)}"
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]} to {n[-1]}"
    text = (
        f"Design: with {seeds} seeds this design detects FID differences above {size} (80% power at the level "
        f"used, from the seeds' own spread)"
    )
    need = [v for v in tested if v.seeds_for_margin is not None]
    if need:
        most = max(v.seeds_for_margin for v in need)
        text += (
            f"; to detect the spec's margin of {num(need[0].margin)} FID as this pilot varies would take {most} seeds"
        )
    return text + "."


def fid_sentence(data: AblationData, at: pd.DataFrame, setting: str, reasons: dict[str, str], fam: list) -> str:
    """The arms on FID at ``setting``, or a refusal to rank FIDs computed on different bases."""
    refusal = fid_refusal(at, data.runs)
    if refusal is not None:
        absent = [
            f"; {a}: {reasons.get(a, 'no fid recorded')}"
            for a in data.arms
            if not at.loc[at["arm_label"] == a, "fid"].notna().any()
        ]
        return f"On FID with {setting} at the end of training: {refusal}{''.join(absent)}."
    basis = fid_bases(at, data.runs)
    return (
        f"On FID with {setting} at the end of training{f' ({basis[0]})' if basis else ''}, "
        f"{arms_answer(at, data.arms, reasons=reasons, comps=_comps(fam, 'fid'))}."
    )


def loss_sentences(data: AblationData, reasons: dict[str, str], fam: list) -> list[str]:
    """Final losses compared within each group of arms that share the training objective only."""
    groups = objective_groups(data)
    out = [
        f"On final training loss{f' among {and_list(g)} (same objective)' if len(groups) > 1 else ''}, "
        f"{arms_answer(data.runs, g, 'final_loss', 'loss', reasons, comps=_comps(fam, 'final_loss'))}."
        for g in groups
        if len(g) > 1
    ]
    if len(groups) > 1:
        out.append(
            "Final training losses of arms with different training objectives ("
            + " vs ".join(and_list(g) for g in groups)
            + ") are on different scales and are not compared."
        )
    return out


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def budget_sentence(data: AblationData) -> str:
    r, e = data.runs, data.evals
    seeds = sorted(set(r["seed"]))
    basis = e.dropna(subset=["num_generated"]).drop_duplicates(["num_generated", "num_reference"])
    samples = (
        "FID sample counts not logged"
        if basis.empty
        else "FID from "
        + "; ".join(
            f"{int(b.num_generated):,} generated against {_one(pd.Series([b.num_reference]))} real images"
            for b in basis.itertuples()
        )
    )
    images = (  # a results table of one's own may not say what a step is
        f" x {_one(r['batch_size'])} images = {_one(r['images_seen'])} images seen per run"
        if r["batch_size"].notna().any()
        else ""
    )
    total = r["seconds"].sum(min_count=1)
    wall = "training-run wall time not logged" if math.isnan(total) else f"{duration(total)} of training-run wall time"
    return (
        f"Budget: the {data.profile} profile, {_steps(r)} training steps{_epochs(data)}{images}, "
        f"{_plural(len(r), 'training run')} "
        f"({_plural(len(data.arms), 'arm')} x seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))}, "
        f"{wall}); {samples}, in the feature space "
        f"of a domain classifier, not InceptionV3."
    )


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _one(values: pd.Series) -> str:
    """The value shared by every run, or the range when runs differ."""
    v = sorted(set(values.dropna()))
    if not v:
        return "an unlogged number of"
    show = lambda x: f"{int(x):,}" if float(x).is_integer() else f"{x:,}"  # noqa: E731 - 96,000 even as a float
    return show(v[0]) if len(v) == 1 else f"{show(v[0])} to {show(v[-1])} (runs differ)"


def _steps(runs: pd.DataFrame) -> str:
    return _one(runs["steps"])


def _epochs(data: AblationData) -> str:
    """' (100 epochs of 79 steps)' where the report counts epochs, else nothing."""
    if data.unit != "epoch":
        return ""
    r = data.runs

    def one(values: pd.Series) -> str:
        v = sorted(set(values))
        return num(v[0]) if len(v) == 1 else f"{num(v[0])} to {num(v[-1])} (runs differ)"

    return f" ({one(r['steps'] / r['steps_per_epoch'])} epochs of {one(r['steps_per_epoch'])} steps)"
