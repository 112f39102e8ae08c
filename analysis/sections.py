"""The evidence of a report: one builder per section, each ``(AblationData) -> Section | None``
(None: nothing to show for this experiment). ``SECTIONS`` is their order in the document; a new
section (a sweep's trials, say) is one more builder appended there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

from harness.config import schema

from . import figures
from .answers import front_sentence, recognizable_answer, recognizable_steps, settings_front
from .arm_labels import arm_label
from .arms import arms_section
from .caveats import fid_bases, fid_refusal, heun_sentence, missing_evaluations, objective_groups
from .comparisons import comparison_section
from .crossing import crossing_table
from .families import first_setting, guidance_family, sampler_family, varies_guidance, varies_sampler
from .load import AblationData
from .matched import matched_section
from .opening import _cap, _one, _steps, duration
from .render import Section, Table
from .stats import ZERO_VARIANCE, summarize
from .words import LOWER_IS_BETTER, metric_label, num

# The quality metrics a report compares across arms, in the registry's order.
METRICS = tuple(m for m in LOWER_IS_BETTER if m in schema.METRICS)


# -- evidence -----------------------------------------------------------------------------------------

CELL_CAPTION = "Mean over seeds [95% CI] where there are 2+ seeds."


def cell(mean: float, low: float, high: float, method: str = "") -> str:
    """A table cell: '51.0 [48.5, 53.5]'; '0.7 (all seeds equal)' without variance; the bare mean of one seed."""
    if method == ZERO_VARIANCE:
        return f"{num(mean)} (all seeds equal)"
    return f"{num(mean)} [{num(low)}, {num(high)}]" if math.isfinite(low) else num(mean)


def device_sentence(devices: set[str]) -> str:
    kinds = {d.split(":")[0] for d in devices}
    if kinds <= {"cpu", "cuda", "mps"}:
        names = {"cpu": "CPU", "cuda": "GPU", "mps": "Apple GPU"}
        hours = " and ".join(names[k] for k in sorted(kinds))
        return f"Devices: {', '.join(sorted(devices))}, so these are {hours}-hours."
    return (
        f"train.device = {', '.join(sorted(devices))}; the device a run resolved to is not logged, so whether "
        f"these are CPU- or GPU-hours is not recorded."
    )


def setup_section(data: AblationData) -> Section:
    r, e = data.runs, data.evals
    s = Section("Setup and budget")
    if r.empty:
        s.paragraphs.append(
            "No finished training run."
            + "".join(f" {arm_label(j['arm'])} seed {j['seed']}: {j['reason']}." for j in data.missing)
        )
        return s
    train_s = r["seconds"].sum(min_count=1)
    eval_s = e["seconds"].sum() if len(e) else 0.0
    s.paragraphs.append(
        f"Experiment {data.experiment}, profile {data.profile}, data set {', '.join(sorted(set(r['dataset'])))}. "
        f"Axes: {' / '.join(data.axes) or 'none (one configuration)'}; arms: {'; '.join(data.arms)}; "
        f"seeds: {', '.join(map(str, sorted(set(r['seed']))))}. Each run trains {_steps(r)} steps"
        + (
            f" of {_one(r['batch_size'])} images ({_one(r['images_seen'])} images seen; "
            f"{int(r['images_seen'].sum()):,} over all {len(r)} runs) at {num(r['images_per_second'].mean())} "
            "images/s on average."
            if r["batch_size"].notna().any()
            else " (the images per step were not logged)."
        )
    )
    sampling = e["sample_seconds"].sum() if len(e) else 0.0
    s.paragraphs.append(
        "Compute: not logged (a results table without run times). "
        if math.isnan(train_s)
        else f"Compute: {(train_s + eval_s) / 3600:.3g} device-hours of wall time summed over runs, so parallel "
        f"jobs add up: {duration(train_s)} in training runs (with their periodic evaluations, and the final "
        f"evaluations that ran at the end of training) and {duration(eval_s)} in separate evaluation runs. Sampling "
        f"the final evaluations took {duration(sampling)} (the sum of their own sample_seconds, part of the above). "
        f"{device_sentence(set(r['device']))}"
    )
    acc = r["classifier_accuracy"].dropna()
    held_out = f"held-out accuracy {acc.iloc[0]:.1%}" if len(acc) else "held-out accuracy not logged"
    inception = e["fid_inception"].notna().any()
    why = e["fid_inception_unavailable"].dropna()
    bases = fid_bases(e, r)
    s.paragraphs.append(
        f"Evaluation settings: {', '.join(data.settings)}. Each evaluation generates samples from fixed noise and "
        f"compares them with real images: {'; '.join(bases) if bases else 'sample counts not logged'}"
        + (" (FIDs on different bases are not ranked against each other)" if len(bases) > 1 else "")
        + ". "
        f"FID, KID, precision and recall are computed in the feature space of the harness's domain classifier (a "
        f"small CNN trained on the data set; {held_out}), so these FIDs are on that classifier's scale and are not "
        f"comparable with published InceptionV3 FIDs. KID is the unbiased squared MMD with the cubic polynomial "
        f"kernel in those 128-dimensional features, so its unit is theirs and it is shown unscaled (published "
        f"InceptionV3 KIDs, often quoted x 10^3, are on another scale). "
        + (
            "InceptionV3 FID is logged as fid_inception. "
            if inception
            else f"InceptionV3 FID is unavailable ({why.iloc[0]}). "
            if len(why)
            else ""
        )
        + f"Recognizability is the fraction of samples that the recognizer (the same CNN trained with an extra "
        f"reject class of synthetic non-digits) assigns to a digit class with probability at least "
        f"{_one(r['recognizability_threshold'])}: noise, blobs and scrambled strokes are rejected (docs/metrics.md "
        f"gives the definition and its calibration)."
    )
    if heun := heun_sentence(e, r):
        s.paragraphs.append(heun)
    notes = []
    if (~r["has_history"]).any():
        reused = r.loc[~r["has_history"], "arm_label"] + " seed " + r.loc[~r["has_history"], "seed"].astype(str)
        notes.append(
            f"{(~r['has_history']).sum()} training run(s) ({', '.join(reused)}) found their checkpoint already "
            f"finished by another experiment with the same configuration hash: they log no training loss and "
            f"no periodic evaluations here, and their wall time does not include the training."
        )
    if data.missing:
        notes.append(
            f"{len(data.missing)} planned job(s) have no finished training run: "
            + "; ".join(f"{arm_label(j['arm'])} seed {j['seed']} ({j['reason']})" for j in data.missing)
            + "."
        )
    if lost := missing_evaluations(data):
        notes.append(f"{len(lost)} planned evaluation(s) are missing: {'; '.join(lost)}.")
    if data.parent_status and data.parent_status != "FINISHED":
        notes.append(f"The newest harness run of this experiment is {data.parent_status}.")
    s.paragraphs += notes
    return s


def settings_section(data: AblationData) -> Section | None:
    if not varies_sampler(data):
        return None
    fam = sampler_family(data)
    s = Section("Sampler settings: quality against network evaluations")
    s.paragraphs.append(front_sentence(fam))
    if refusal := fid_refusal(fam, data.runs):
        s.paragraphs.append(_cap(refusal) + ".")
    summary = summarize(fam, "fid", ["setting", "arm_label"]).set_index(["setting", "arm_label"])
    nfe = fam.groupby("setting")["nfe"].mean()
    extra = [c for c in ("classifier_passes", "sample_seconds") if c in fam and fam[c].notna().any()]
    cost = fam.groupby(["setting", "arm_label"])[extra].mean()  # optional columns: NaN for older runs
    rows = [
        [setting, arm, num(nfe[setting])]
        + [num(cost.at[(setting, arm), c]) for c in extra]
        + (
            [
                cell(*summary.loc[(setting, arm), ["mean", "low", "high", "method"]]),
                int(summary.at[(setting, arm), "n"]),
            ]
            if (setting, arm) in summary.index
            else ["no FID recorded", 0]
        )
        for setting, arm in fam[["setting", "arm_label"]].drop_duplicates().itertuples(index=False)
    ]
    names = {"classifier_passes": "classifier passes", "sample_seconds": "sampling seconds"}
    s.tables.append(Table(["setting", "arm", "NFE", *(names[c] for c in extra), "FID", "seeds"], rows, CELL_CAPTION))
    fig = figures.fid_vs_nfe(fam, settings_front(fam))
    s.add_picture(
        "fid_vs_nfe",
        "FID against network evaluations per sample (log scale), one line per arm and "
        "sampler; error bars: 95% CI over seeds; dashed: each arm's Pareto front.",
        figures.to_png(fig),
    )
    return s


def guidance_section(data: AblationData) -> Section | None:
    if not varies_guidance(data):
        return None
    fam = guidance_family(data)
    s = Section("Guidance trade-off")
    metrics = [
        m
        for m in ("class_accuracy", "recognized_class_accuracy", "fid", "recognizability")
        if m == "class_accuracy" or fam[m].notna().any()
    ]
    tables = [summarize(fam, m, ["arm_label", "guidance"]).set_index(["arm_label", "guidance"]) for m in metrics]
    keys = fam[["arm_label", "guidance"]].drop_duplicates().sort_values("guidance", kind="stable")
    rows = [
        [arm, f"{w:g}", int(tables[0].at[(arm, w), "n"]) if (arm, w) in tables[0].index else 0]
        + [
            cell(*t.loc[(arm, w), ["mean", "low", "high", "method"]]) if (arm, w) in t.index else "not recorded"
            for t in tables
        ]
        for arm, w in keys.itertuples(index=False)
    ]
    s.paragraphs.append(
        "w = 0 is no guidance; the guided output is (1 + w) cond - w uncond. "
        "recognized_class_accuracy is the class accuracy among recognizable samples only."
    )
    s.tables.append(Table(["arm", "w", "seeds with class accuracy", *metrics], rows, CELL_CAPTION))
    blind = sorted(set(fam["guidance"]) - set(fam.loc[fam["class_accuracy"].notna(), "guidance"]))
    if blind:
        s.paragraphs.append(
            f"No class accuracy is recorded at w = {', '.join(f'{w:g}' for w in blind)}: those weights "
            "are in the table but cannot be drawn in the figure."
        )
    fig = figures.guidance_tradeoff(fam, data.arms)
    s.add_picture(
        "guidance",
        "FID and class accuracy against the guidance weight w (bands: 95% CI over "
        "seeds), and the two against each other.",
        figures.to_png(fig),
    )
    return s


def final_metrics_section(data: AblationData) -> Section | None:
    if data.evals.empty:
        return None
    s = Section("Final metrics")
    e = data.evals
    metrics = [m for m in (*METRICS, "nfe", "sample_seconds", "num_generated") if e[m].notna().any()]
    tables = {m: summarize(e, m, ["setting", "arm_label"]).set_index(["setting", "arm_label"]) for m in metrics}
    keys = e[["setting", "arm_label"]].drop_duplicates().itertuples(index=False)
    rows = [
        [setting, arm, int(e.loc[(e["setting"] == setting) & (e["arm_label"] == arm), "seed"].nunique())]
        + [
            cell(*tables[m].loc[(setting, arm), ["mean", "low", "high", "method"]])
            if (setting, arm) in tables[m].index
            else "not recorded"
            for m in metrics
        ]
        for setting, arm in keys
    ]
    s.tables.append(
        Table(
            ["setting", "arm", "seeds evaluated", *(metric_label(m) for m in metrics)],
            rows,
            "At the last training step; a cell's interval uses only the seeds with a value. " + CELL_CAPTION,
        )
    )
    return s


def training_section(data: AblationData) -> Section | None:
    if data.runs.empty:
        return None
    s = Section("Training loss")
    final = summarize(data.runs, "final_loss", ["arm_label"]).set_index("arm_label")
    s.paragraphs.append(
        "Final training loss (mean of the last log interval; mean over seeds [95% CI]): "
        + "; ".join(
            f"{a} {cell(*final.loc[a, ['mean', 'low', 'high', 'method']])}" for a in data.arms if a in final.index
        )
        + "."
    )
    if len(groups := objective_groups(data)) > 1:
        s.paragraphs.append(
            "The arms differ in the diffusion objective (schedule, prediction target, loss weighting "
            "or timesteps), so their losses are on different scales: compare the shapes of the curves, "
            "not their levels, between "
            # Arms that share an objective are grouped in braces; single arms need none.
            + " and ".join(g[0] if len(g) == 1 else "{" + ", ".join(g) + "}" for g in groups)
            + "."
        )
    fig = figures.loss_curves(data.loss.assign(step=data.to_unit(data.loss)), data.arms, unit=data.unit)
    s.add_picture(
        "loss",
        f"Training loss against {data.unit} (running mean over ~1% of training); band: 95% CI over seeds.",
        figures.to_png(fig),
    )
    fig = figures.bucket_losses(data.buckets, data.arms)
    s.add_picture(
        "loss_by_timestep",
        "Loss per tenth of the timestep range over the last quarter of "
        "training: where in t each arm's remaining error lies.",
        figures.to_png(fig),
    )
    if data.loss.empty:
        s.paragraphs.append("No training-loss history is logged in this experiment.")
    return s


def progress_section(data: AblationData) -> Section | None:
    setting = first_setting(data)
    if setting is None or data.runs.empty:
        return None
    s = Section(f"Quality over training ({setting})")
    steps = recognizable_steps(data, setting)
    s.paragraphs.append(_cap(recognizable_answer(steps, data.arms, setting)) + ".")
    metrics = ("fid", "recognizability") + (("class_accuracy",) if data.runs["conditional"].any() else ())
    threshold = float(data.runs["recognizable_fraction"].iloc[0])
    curves = data.curves.assign(step=data.to_unit(data.curves))
    fig = figures.metric_curves(
        curves, setting, metrics, data.arms, thresholds={"recognizability": threshold}, unit=data.unit
    )
    s.add_picture(
        "quality_over_training",
        f"Metrics of the periodic evaluations with {setting}; bands: "
        f"95% CI over seeds; dashed: the recognizability threshold {threshold:g}.",
        figures.to_png(fig),
    )
    s.tables.append(crossing_table(steps, data.unit))
    return s


def samples_section(data: AblationData) -> Section | None:
    setting = first_setting(data)
    if setting is None or data.runs.empty:
        return None
    s = Section("Samples")
    fig = figures.sample_strip(data.grids.assign(step=data.to_unit(data.grids)), setting, data.arms, unit=data.unit)
    s.add_picture(
        "samples_over_training",
        f"Samples with {setting} at evaluation {data.unit}s over training, "
        "one row per arm (lowest seed); the same noise x_T in every frame.",
        figures.to_png(fig),
    )
    if len(data.settings) > 1:
        fig = figures.final_samples(data.grids, data.settings, data.arms)
        if fig is not None:
            shown = set(data.grids["setting"])
            absent = [x for x in data.settings if x not in shown]
            s.add_picture(
                "samples_by_setting",
                "The last saved sample grid of each evaluation setting "
                f"(same noise), {figures.SETTINGS_PER_ROW} settings per block of rows, one row "
                "per arm (lowest seed)" + (f"; no grid saved for {', '.join(absent)}" if absent else "") + ".",
                figures.to_png(fig),
            )
    if not s.pictures:
        dirs = sorted({str(Path(c).parent / "grids") for c in data.runs["checkpoint"] if c})
        s.paragraphs.append("No sample grids found on disk" + (f" (looked in {', '.join(dirs)})." if dirs else "."))
    return s


def sections_for(margins: dict[str, float] | None) -> tuple[Callable[[AblationData], Section | None], ...]:
    """SECTIONS with the spec's equivalence margins given to the comparison table (one family, one TOST)."""
    return tuple(partial(comparison_section, margins=margins) if b is comparison_section else b for b in SECTIONS)


SECTIONS: tuple[Callable[[AblationData], Section | None], ...] = (
    setup_section,
    arms_section,
    comparison_section,
    matched_section,
    settings_section,
    guidance_section,
    final_metrics_section,
    progress_section,
    samples_section,
    training_section,
)
