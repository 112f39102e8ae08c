"""The size of each arm's network: parameters and GFLOPs per image, so that "at equal parameters" or
"at equal compute" can be checked from the report rather than taken on trust (backbone ablations)."""

from __future__ import annotations

import math

import pandas as pd

from .load import AblationData
from .render import Section, Table
from .words import num

FLOPS_NOTE = (
    "GFLOPs: one forward pass on one image at the data's shape, as torch's FlopCounterMode counts them "
    "(matrix products, convolutions and attention; a multiply-add is 2 FLOPs, so the DiT paper's Gflops, "
    "which count it once, are half of these; norms and activations are not counted). A sample's network "
    "cost is its NFE (batch rows: a classifier-free-guided step counts 2) times this, plus the classifier's "
    "passes under classifier guidance; the sampling seconds measured are in the final-metrics table."
)


def _value(values: pd.Series) -> str:
    """The arm's value (every seed builds the same network), or the range if the runs disagree."""
    v = sorted(set(values.dropna()))
    if not v:
        return "not logged"
    return num(v[0]) if len(v) == 1 else f"{num(v[0])} to {num(v[-1])} (runs differ)"


def ratio_sentence(sizes: pd.DataFrame, column: str, what: str) -> str:
    """'The largest arm (dit) has 1.14x the GFLOPs per image of the smallest (unet).' (or equality)."""
    s = sizes[column].dropna()
    if len(s) < 2:
        return ""
    big, small = s.idxmax(), s.idxmin()
    if s[big] == s[small]:
        return f"Every arm has the same {what} ({num(s[big])})."
    return f"The largest arm ({big}) has {s[big] / s[small]:.2f}x the {what} of the smallest ({small})."


def arms_section(data: AblationData) -> Section | None:
    """One row per arm: parameters, GFLOPs per image and training throughput."""
    r = data.runs
    if r.empty:
        return None
    s = Section("The arms: network size and compute")
    rows, sizes = [], {}
    for arm in data.arms:
        runs = r[r["arm_label"] == arm]
        if runs.empty:
            continue
        rows.append(
            [
                arm,
                _value(runs["num_parameters"]),
                _value(runs["gflops_per_image"]),
                num(runs["images_per_second"].mean()),
            ]
        )
        sizes[arm] = {c: runs[c].dropna().median() for c in ("num_parameters", "gflops_per_image")}
    sizes = pd.DataFrame.from_dict(sizes, orient="index")
    s.tables.append(Table(["arm", "parameters", "GFLOPs per image", "training images/s"], rows, caption=FLOPS_NOTE))
    ratios = [
        ratio_sentence(sizes, "num_parameters", "parameters"),
        ratio_sentence(sizes, "gflops_per_image", "GFLOPs per image"),
    ]
    if any(math.isnan(v) for v in sizes.to_numpy().ravel()):
        ratios.append("Runs tracked before the harness logged model/num_parameters show 'not logged'.")
    s.paragraphs.append(" ".join(t for t in ratios if t) or "One arm: nothing to compare its size with.")
    return s
