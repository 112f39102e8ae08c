"""Figures from the report's DataFrames (seaborn on matplotlib's Agg canvas).

Each function takes tidy tables (analysis/load.py) and returns a ``matplotlib.figure.Figure``, or
None when the data for it are absent. Figures are built with the object API (``Figure`` +
``FigureCanvasAgg``), never pyplot, so nothing global is touched: no backend switch, no open-figure
registry to leak. Bands and error bars are 95% t-intervals over seeds (analysis.stats.band), the same
intervals the text reports.
"""

from __future__ import annotations

import io
import math

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.config import SamplerSetting

from .stats import band
from .words import num

STYLE = "whitegrid"
MAX_POINTS = 400  # per curve: enough for the eye, few enough for a small PNG
WIDTH = 10.0  # inches; at 100 dpi the PNGs fit the report's 1,000-pixel column


def new_figure(ncols: int = 1, nrows: int = 1, *, height: float = 3.6, width: float = WIDTH):
    """A Figure on an Agg canvas and its axes (an array when there are several)."""
    fig = Figure(figsize=(width, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    with sns.axes_style(STYLE):
        axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def to_png(fig: Figure | None, dpi: int = 100) -> bytes | None:
    """The figure as PNG bytes; None for no figure (there was nothing to draw)."""
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _palette(order: list[str]) -> dict[str, tuple]:
    return dict(zip(order, sns.color_palette("colorblind", max(1, len(order)))))


def _mean_band(ax, df: pd.DataFrame, x: str, y: str, hue: str, order: list[str], *, marker: str | None = None) -> None:
    """Mean line per ``hue`` with its 95% band over seeds (no band with one seed)."""
    b = band(df, x, y, hue)  # the same t-intervals as the text, not seaborn's bootstrap
    order = [o for o in order if o in set(b[hue])]
    colors = _palette(order)
    sns.lineplot(
        b,
        x=x,
        y="mean",
        hue=hue,
        hue_order=order,
        palette=colors,
        marker=marker,
        errorbar=None,
        linewidth=1.6,
        markeredgewidth=0,
        ax=ax,
    )
    floor = b["mean"][b["mean"] > 0].min() / 2 if ax.get_yscale() == "log" else -np.inf  # a band below 0 on a log axis
    for name in order:
        part = b[b[hue] == name].sort_values(x)
        if (part["n"] >= 2).any():
            ax.fill_between(part[x], part["low"].clip(lower=floor), part["high"], color=colors[name], alpha=0.2, lw=0)
    ax.set_ylabel(y)


def _integer_x(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _log_if_wide(ax, values, axis: str = "y") -> None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) and v.max() / v.min() > 30:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def smooth_loss(loss: pd.DataFrame, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """Per-run running mean of the per-step loss (window ~1% of training), thinned to ``max_points`` steps."""
    out = []
    for _, run in loss.sort_values("step").groupby("run_id", sort=False):
        window = max(1, len(run) // 100)
        run = run.assign(loss=run["loss"].rolling(window, min_periods=1).mean())
        stride = max(1, math.ceil(len(run) / max_points))
        out.append(run.iloc[list(range(0, len(run), stride)) + ([len(run) - 1] if (len(run) - 1) % stride else [])])
    return pd.concat(out) if out else loss


def loss_curves(loss: pd.DataFrame, order: list[str], *, hue: str = "arm_label", unit: str = "step") -> Figure | None:
    """Training loss against step (column ``step``, in ``unit``), one line per arm (running mean; band: 95% CI
    over seeds)."""
    if loss.empty:
        return None
    fig, ax = new_figure()
    smooth = smooth_loss(loss)
    _log_if_wide(ax, smooth["loss"])
    _mean_band(ax, smooth, "step", "loss", hue, order)
    ax.set(xlabel=f"training {unit}", ylabel="training loss (running mean)")
    _integer_x(ax)
    ax.legend(title=None, fontsize="small")
    return fig


def bucket_losses(
    buckets: pd.DataFrame, order: list[str], *, hue: str = "arm_label", last: float = 0.25
) -> Figure | None:
    """Loss per tenth of the timestep range over the last ``last`` fraction of training, one line per arm:
    where in t each arm's remaining difficulty lies."""
    if buckets.empty:
        return None
    cutoff = buckets.groupby("run_id")["step"].transform("max") * (1 - last)
    late = buckets[buckets["step"] >= cutoff].groupby(["run_id", hue, "seed", "bucket"], as_index=False)["loss"].mean()
    fig, ax = new_figure()
    _log_if_wide(ax, late["loss"])
    _mean_band(ax, late, "bucket", "loss", hue, order, marker="o")
    ax.set_xticks(range(10), [f"{b / 10:.1f}-{(b + 1) / 10:.1f}" for b in range(10)], fontsize="small")
    ax.set(xlabel="timestep t / T", ylabel=f"loss (mean of the last {last:.0%} of training)")
    ax.legend(title=None, fontsize="small")
    return fig


def metric_curves(
    curves: pd.DataFrame,
    setting: str,
    metrics: tuple[str, ...],
    order: list[str],
    *,
    hue: str = "arm_label",
    thresholds: dict[str, float] | None = None,
    unit: str = "step",
) -> Figure | None:
    """Periodic evaluation metrics of one sampler setting against training step (column ``step``, in
    ``unit``), one panel per metric."""
    part = curves[(curves["setting"] == setting) & curves["metric"].isin(metrics)]
    metrics = tuple(m for m in metrics if m in set(part["metric"]))
    if not metrics:
        return None
    fig, axes = new_figure(len(metrics), height=3.4)
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics):
        m = part[part["metric"] == metric]
        if metric in ("fid", "kid"):
            _log_if_wide(ax, m["value"])
        _mean_band(ax, m, "step", "value", hue, order, marker="o")
        if thresholds and metric in thresholds:
            ax.axhline(thresholds[metric], color="0.4", ls="--", lw=1)
        ax.set(xlabel=f"training {unit}", ylabel=metric, title=f"{metric} ({setting})")
        _integer_x(ax)
        ax.legend(title=None, fontsize="small")
    return fig


def sample_strip(
    grids: pd.DataFrame,
    setting: str,
    order: list[str],
    *,
    hue: str = "arm_label",
    max_frames: int = 6,
    unit: str = "step",
) -> Figure | None:
    """Sample grids of one setting over training (column ``step``, in ``unit``), one row per arm (its lowest
    seed): the same noise x_T in every frame, so a reader sees digits appear."""
    part = grids[grids["setting"] == setting]
    part = part[part["seed"] == part.groupby(hue)["seed"].transform("min")]
    steps = sorted(set(part["step"]))
    if len(steps) > max_frames:  # evenly spaced frames, always the first and the last
        steps = [steps[round(i * (len(steps) - 1) / (max_frames - 1))] for i in range(max_frames)]
    return picture_matrix(
        part, hue, "step", [o for o in order if o in set(part[hue])], steps, title=lambda s: f"{unit} {num(s)}"
    )


SETTINGS_PER_ROW = 6  # columns of the samples-by-setting figure; more settings wrap into further blocks


def final_samples(
    grids: pd.DataFrame,
    settings: list[str],
    order: list[str],
    *,
    hue: str = "arm_label",
    per_row: int = SETTINGS_PER_ROW,
) -> Figure | None:
    """The last saved grid of every setting (columns, wrapped into blocks of ``per_row``), one row per arm
    (its lowest seed) in each block."""
    part = grids[grids["seed"] == grids.groupby(hue)["seed"].transform("min")]
    part = part[part["step"] == part.groupby("run_id")["step"].transform("max")]
    cols = [s for s in settings if s in set(part["setting"])]
    return picture_matrix(
        part, hue, "setting", [o for o in order if o in set(part[hue])], cols, title=str, wrap=per_row
    )


def picture_matrix(
    cells: pd.DataFrame, row: str, col: str, rows: list, cols: list, *, title, wrap: int | None = None
) -> Figure | None:
    """PNG files (column ``path``) laid out by ``row`` x ``col`` values; missing cells stay blank. With
    ``wrap``, columns beyond ``wrap`` continue in another block of ``rows`` below, each cell titled."""
    if not rows or not cols:
        return None
    paths = {(r, c): p for r, c, p in zip(cells[row], cells[col], cells["path"])}
    images = {key: mpimg.imread(path) for key, path in paths.items() if key[0] in rows and key[1] in cols}
    if not images:
        return None
    wrap = wrap or len(cols)
    blocks = [cols[k : k + wrap] for k in range(0, len(cols), wrap)]
    width = len(blocks[0])
    h, w = next(iter(images.values())).shape[:2]  # grids are as wide as grid_size allows: keep their aspect
    cell_w = min(2.4 * max(1.0, w / h), (WIDTH - 1.2) / width)
    cell_h = cell_w * h / w
    n_rows = len(rows) * len(blocks)
    fig = Figure(figsize=(cell_w * width + 1.2, (cell_h + 0.35) * n_rows + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, width, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()  # a short last block leaves cells empty
    for b, block in enumerate(blocks):
        for i, r in enumerate(rows):
            for j, c in enumerate(block):
                _picture_cell(
                    axes[b * len(rows) + i, j],
                    images.get((r, c)),
                    title(c) if i == 0 else None,
                    str(r) if j == 0 else None,
                )
    return fig


def _picture_cell(ax, image, title: str | None, ylabel: str | None) -> None:
    ax.set_axis_on()
    ax.set_xticks([]), ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if image is not None:
        ax.imshow(image, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize="small")
    if ylabel:
        ax.set_ylabel(ylabel, fontsize="small")


def fid_vs_nfe(evals: pd.DataFrame, front: pd.DataFrame) -> Figure | None:
    """FID against network evaluations per sample, one series per arm and sampler (and eta), with each arm's
    Pareto front ``front`` (answers.settings_front: FIDs of different arms are never averaged into one)."""
    e = evals[evals["fid"].notna() & evals["nfe"].notna()].copy()
    arms = list(dict.fromkeys(e["arm_label"]))
    e["series"] = [
        (f"{row['arm_label']}: " if len(arms) > 1 else "") + SamplerSetting.from_params(row).series
        for row in e.to_dict("records")
    ]
    per = band(e, "setting", "fid", "series").merge(
        e.groupby(["series", "setting"], as_index=False)["nfe"].mean(), on=["series", "setting"]
    )
    if per["setting"].nunique() < 2:
        return None
    fig, ax = new_figure(height=4.2)
    series = list(dict.fromkeys(e["series"]))
    colors = _palette(series)
    for name in series:
        s = per[per["series"] == name].sort_values("nfe")
        ax.errorbar(
            s["nfe"],
            s["mean"],
            yerr=[s["mean"] - s["low"], s["high"] - s["mean"]],
            color=colors[name],
            marker="o",
            capsize=3,
            lw=1.2,
            label=name,
        )
    for i, (arm, f) in enumerate(front.groupby("arm_label", sort=False)):
        f = f.sort_values("nfe")
        label = "Pareto front" + (f" of {arm}" if len(arms) > 1 else "")
        ax.step(f["nfe"], f["fid"], where="post", color="0.2", ls=("--", ":", "-.")[i % 3], lw=1, label=label)
        for row in f.itertuples():
            ax.annotate(row.setting, (row.nfe, row.fid), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set_xscale("log")
    _log_if_wide(ax, per["mean"])
    ax.set(xlabel="network evaluations per sample (NFE, batch rows)", ylabel="FID (domain classifier)")
    ax.legend(fontsize="small")
    return fig


def guidance_tradeoff(evals: pd.DataFrame, order: list[str], *, hue: str = "arm_label") -> Figure | None:
    """FID and class accuracy against the guidance weight w, and the two against each other."""
    e = evals[evals["class_accuracy"].notna()]
    if e["guidance"].nunique() < 2:
        return None
    arms = [o for o in order if o in set(e[hue])]
    fig, axes = new_figure(3, height=3.6)
    _log_if_wide(axes[0], e["fid"])
    for ax, metric in zip(axes[:2], ("fid", "class_accuracy")):
        _mean_band(ax, e, "guidance", metric, hue, arms, marker="o")
        ax.set(xlabel="guidance weight w (0 = none)", ylabel=metric)
        ax.legend(title=None, fontsize="small")
    colors = _palette(arms)
    ax = axes[2]
    for name in arms:
        per = e[e[hue] == name].groupby("guidance", as_index=False)[["fid", "class_accuracy"]].mean()
        ax.plot(per["fid"], per["class_accuracy"], marker="o", color=colors[name], label=name)
        for row in per.itertuples():
            ax.annotate(
                f"w={row.guidance:g}",
                (row.fid, row.class_accuracy),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize="x-small",
            )
    ax.set(xlabel="FID (lower is better)", ylabel="class accuracy (higher is better)", title="trade-off")
    ax.legend(title=None, fontsize="small")
    return fig
