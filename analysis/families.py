"""Which comparison a spec asks for, read from its evaluations: the guidance weights of one sampler, the
samplers at one weight, or arms at one setting. The opening paragraph and the sections both ask here."""

from __future__ import annotations

import pandas as pd

from harness.config import SamplerSetting

from .load import AblationData


def first_setting(data: AblationData) -> str | None:
    return data.settings[0] if data.settings else None


def knob_family(data: AblationData, knob: str) -> pd.DataFrame:
    """Final evaluations whose setting differs from the first setting in the field ``knob`` only: every
    other field of the one schema (SamplerSetting) held, so a classifier-guided setting never joins the
    w = 0 group of classifier-free guidance, nor the other way round."""
    e = data.evals
    if e.empty:
        return e
    ref = e[e["setting"] == first_setting(data)].iloc[0] if (e["setting"] == first_setting(data)).any() else e.iloc[0]
    held = [f for f in SamplerSetting.model_fields if f != knob and f in e]
    return e[(e[held] == ref[held]).all(axis=1)]


def guidance_family(data: AblationData) -> pd.DataFrame:
    """Final evaluations of conditional models that differ from the first setting only in the guidance
    weight (a weight whose class accuracy is NaN stays: it is named, not dropped)."""
    e = knob_family(data, "guidance")
    if e.empty:
        return e
    conditional = e["run_id"].isin(data.runs.loc[data.runs["conditional"].astype(bool), "run_id"])
    return e[conditional | e["class_accuracy"].notna()]


def classifier_family(data: AblationData) -> pd.DataFrame:
    """Final evaluations that differ from the first setting only in ``classifier_scale`` (any model)."""
    return knob_family(data, "classifier_scale")


def sampler_family(data: AblationData) -> pd.DataFrame:
    """Final evaluations at the first setting's guidance weight (the sampler / step-count comparison)."""
    e = data.evals
    if e.empty:
        return e
    w = e.loc[e["setting"] == first_setting(data), "guidance"]
    return e[e["guidance"] == (w.iloc[0] if len(w) else 0.0)]


def varies_guidance(data: AblationData) -> bool:
    return guidance_family(data)["guidance"].nunique() > 1


def varies_classifier(data: AblationData) -> bool:
    fam = classifier_family(data)
    return not fam.empty and fam["classifier_scale"].nunique() > 1


def varies_sampler(data: AblationData) -> bool:
    return sampler_family(data)["setting"].nunique() > 1
