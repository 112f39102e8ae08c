"""A sweep's figures, drawn from the trial runs in MLflow: the optimization history and the parameter slices.

Built on ``figures.new_figure`` (seaborn's style on an Agg canvas, no pyplot) so they read like the
ablation figures; seaborn itself stays imported in ``analysis.figures`` alone. Parameter importances
are not drawn here: they need the Optuna study (fANOVA), so the report embeds the PNG the sweep logged.
Not ``optuna.visualization.matplotlib``: its plots need the study (the report reads MLflow only, and optuna
stays in ``harness.sweeps``), draw on pyplot's global figure, and show neither pruned trials' last periodic
values nor the confirmed values with their intervals.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from .figures import _integer_x, _log_if_wide, new_figure
from .sweep_load import SweepData
from .words import metric_label

PRUNED = "0.55"  # grey: a pruned trial's last periodic value, which is not comparable with a final one


def optimization_history(data: SweepData, confirmed: pd.DataFrame | None = None) -> Figure | None:
    """Objective against trial number, one panel per objective: complete trials, pruned trials at their
    last periodic value, the best so far, and (``confirmed``: trial, mean, low, high) the confirmed values."""
    t = data.trials
    if not t[[o.metric for o in data.objectives]].notna().any().any():
        return None
    fig, axes = new_figure(len(data.objectives), height=3.8)
    for ax, o in zip(np.atleast_1d(axes), data.objectives):
        done = t[t["state"].eq("COMPLETE") & t[o.metric].notna()]
        pruned = t[t["state"].eq("PRUNED") & t[f"last_{o.metric}"].notna()]
        _log_if_wide(ax, pd.concat([done[o.metric], pruned[f"last_{o.metric}"]]))
        ax.scatter(done["trial"], done[o.metric], color="C0", s=28, zorder=3, label=f"complete ({len(done)})")
        if len(pruned):
            ax.scatter(
                pruned["trial"],
                pruned[f"last_{o.metric}"],
                color=PRUNED,
                marker="x",
                s=28,
                zorder=2,
                label=f"pruned, last periodic value ({len(pruned)})",
            )
        best = done[o.metric].cummin() if o.lower_is_better else done[o.metric].cummax()
        ax.step(done["trial"], best, where="post", color="C1", lw=1.6, label="best so far")
        if confirmed is not None and len(confirmed) and o == data.objective:
            ax.errorbar(
                confirmed["trial"] + 0.25,
                confirmed["mean"],
                yerr=[
                    confirmed["mean"] - confirmed["low"].fillna(confirmed["mean"]),
                    confirmed["high"].fillna(confirmed["mean"]) - confirmed["mean"],
                ],
                fmt="D",
                color="C3",
                ms=5,
                capsize=3,
                lw=1.2,
                zorder=4,
                label="confirmed (fresh seeds, 95% CI)",
            )
        better = "lower" if o.lower_is_better else "higher"
        ax.set(xlabel="trial number", ylabel=f"{metric_label(o.metric)} ({better} is better)")
        _integer_x(ax)
        ax.legend(fontsize="small")
    return fig


def parameter_slices(data: SweepData) -> Figure | None:
    """The objective of each complete trial against each searched parameter, coloured by trial number
    (Optuna's slice plot): where along each axis the good trials lie."""
    o = data.objective
    done = data.trials[data.trials["state"].eq("COMPLETE") & data.trials[o.metric].notna()]
    if done.empty or not data.params:
        return None
    per_row = min(4, len(data.params))
    nrows = math.ceil(len(data.params) / per_row)
    fig, axes = new_figure(per_row, nrows, height=3.2)
    axes = np.atleast_1d(axes).ravel()
    for ax in axes[len(data.params) :]:
        ax.set_axis_off()
    points = None
    for ax, key in zip(axes, data.params):
        spec = data.space.get(key, {})
        x = pd.to_numeric(done[key], errors="coerce")
        if spec.get("type") == "categorical" or x.isna().any():
            choices = [str(c) for c in spec.get("choices", [])] or sorted(set(done[key].astype(str)))
            position = {c: i for i, c in enumerate(choices)}
            jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(done))  # fixed: the PNG is reproducible
            x = done[key].astype(str).map(position).astype(float) + jitter
            ax.set_xticks(range(len(choices)), choices)
            ax.set_xlim(-0.5, len(choices) - 0.5)
        elif "low" in spec:  # the whole searched range, so a reader sees which part of it was explored
            if spec.get("log"):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
                pad = (spec["high"] / spec["low"]) ** 0.03
                ax.set_xlim(spec["low"] / pad, spec["high"] * pad)
            else:
                pad = 0.03 * (spec["high"] - spec["low"])
                ax.set_xlim(spec["low"] - pad, spec["high"] + pad)
        points = ax.scatter(x, done[o.metric], c=done["trial"], cmap="viridis", s=24, edgecolors="none")
        _log_if_wide(ax, done[o.metric])
        ax.set(xlabel=key, ylabel=metric_label(o.metric))
    bar = fig.colorbar(points, ax=list(axes[: len(data.params)]), label="trial number", shrink=0.8)
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig
