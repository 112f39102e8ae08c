"""The opening paragraph: the answer to the spec's question, computed from the tables, with every caveat
a reader needs first (failures lead, then the answer, then what it rests on)."""

from __future__ import annotations

import math

import pandas as pd

from . import matched
from .answers import arms_answer, guidance_answer, recognizable_answer, recognizable_steps, settings_answer
from .caveats import (
    code_sentence,
    failed_arms,
    failure_sentence,
    fid_bases,
    fid_refusal,
    heun_sentence,
    objective_groups,
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
from .stats import estimate
from .words import and_list, num

# -- the paragraph ------------------------------------------------------------------------------------


def answer(data: AblationData) -> str:
    """The answer to the spec's question; on a plan with failures the first sentence says so."""
    sentences = [s for s in (failure_sentence(data),) if s]
    if data.runs.empty or data.evals.empty:
        nothing = "No finished training run with evaluations in this experiment yet, so there is no answer."
        return " ".join([*sentences, nothing])
    setting = first_setting(data)
    reasons = failed_arms(data)
    at = data.evals[data.evals["setting"] == setting]
    recognizable = _cap(recognizable_answer(recognizable_steps(data, setting), data.arms, setting)) + "."
    if len(data.arms) > 1 and matched.disjoint(data):  # each arm sampled with its own settings: meet by NFE
        sentences += matched.matched_sentences(data)
        sentences += loss_sentences(data, reasons)
        sentences.append(recognizable)
    elif len(data.arms) > 1:
        sentences.append(fid_sentence(data, at, setting, reasons))
        sentences += loss_sentences(data, reasons)
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
        e = estimate(at["fid"])
        fid = f"FID {num(e.mean) if e.n else 'not recorded'}" + (
            f" (95% CI {num(e.low)} to {num(e.high)})" if e.has_interval else ""
        )
        sentences += [f"There is one arm and one setting, so nothing is compared: {fid} with {setting}.", recognizable]
    sentences += [s for s in (heun_sentence(data.evals, data.runs), code_sentence(data)) if s]
    sentences.append(budget_sentence(data))
    if data.profile == "smoke":
        sentences.append(
            "This is the smoke profile: its numbers check that the pipeline runs end to end and say "
            "nothing about the question."
        )
    return " ".join(sentences)


def periodic(data: AblationData) -> bool:
    """Whether some run logged evaluations before its last step (``eval_every`` or ``eval_epochs``)."""
    return bool(len(data.curves)) and data.curves.groupby("run_id")["step"].nunique().max() > 1


def fid_sentence(data: AblationData, at: pd.DataFrame, setting: str, reasons: dict[str, str]) -> str:
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
        f"{arms_answer(at, data.arms, reasons=reasons)}."
    )


def loss_sentences(data: AblationData, reasons: dict[str, str]) -> list[str]:
    """Final losses compared within each group of arms that share the training objective only."""
    groups = objective_groups(data)
    out = [
        f"On final training loss{f' among {and_list(g)} (same objective)' if len(groups) > 1 else ''}, "
        f"{arms_answer(data.runs, g, 'final_loss', 'loss', reasons)}."
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
    basis = e.dropna(subset=["num_generated", "num_reference"]).drop_duplicates(["num_generated", "num_reference"])
    samples = (
        "FID sample counts not logged"
        if basis.empty
        else "FID from "
        + "; ".join(
            f"{int(b.num_generated):,} generated against {int(b.num_reference):,} real images"
            for b in basis.itertuples()
        )
    )
    return (
        f"Budget: the {data.profile} profile, {_steps(r)} training steps{_epochs(data)} x {_one(r['batch_size'])} "
        f"images = "
        f"{_one(r['images_seen'])} images seen per run, {_plural(len(r), 'training run')} "
        f"({_plural(len(data.arms), 'arm')} x seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))}, "
        f"{duration(r['seconds'].sum())} of training-run wall time); {samples}, in the feature space of a domain "
        f"classifier, not InceptionV3."
    )


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _one(values: pd.Series) -> str:
    """The value shared by every run, or the range when runs differ."""
    v = sorted(set(values))
    return f"{v[0]:,}" if len(v) == 1 else f"{v[0]:,} to {v[-1]:,} (runs differ)"


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
