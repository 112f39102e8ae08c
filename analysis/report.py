"""An experiment's report: the question and its answer in one paragraph, then the evidence.

``build_document`` works on ``AblationData`` alone (tests feed it fixture tables); ``write_report``
loads from MLflow and writes ``index.html`` (self-contained) and ``report.md`` (PNG files beside it);
``log_report`` attaches them to the newest ``harness run`` of the experiment.

The evidence is a list of section builders with one signature, ``(AblationData) -> Section | None``
(None: nothing to show for this experiment). Hyper-parameter sweeps are later work: a sweep report is
one more builder taking the study's trials table, appended to ``SECTIONS``; nothing else changes.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from harness.schema import ROLE
from harness.tracking import MlflowStore

from . import figures
from .answers import (LOWER_IS_BETTER, NO_DIFFERENCE, arms_answer, guidance_answer, num, recognizable_answer,
                      recognizable_steps, settings_answer, settings_front, with_ci)
from .load import AblationData, load_experiment
from .render import Document, Picture, Section, Table, to_html, to_markdown
from .stats import compare_to_reference, estimate, summarize

METRICS = ("fid", "kid", "precision", "recall", "recognizability", "class_accuracy")


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    md: Path


# -- which comparison the spec asks for ---------------------------------------------------------------

def first_setting(data: AblationData) -> str | None:
    return data.settings[0] if data.settings else None


def guidance_family(data: AblationData) -> pd.DataFrame:
    """Final evaluations that differ from the first setting only in the guidance weight."""
    e = data.evals
    if e.empty:
        return e
    ref = e[e["setting"] == first_setting(data)].iloc[0] if (e["setting"] == first_setting(data)).any() else e.iloc[0]
    same = (e["sampler"] == ref["sampler"]) & (e["steps"] == ref["steps"]) & (e["eta"] == ref["eta"])
    return e[same & e["class_accuracy"].notna()]


def sampler_family(data: AblationData) -> pd.DataFrame:
    """Final evaluations at the first setting's guidance weight (the sampler / step-count comparison)."""
    e = data.evals
    if e.empty:
        return e
    w = e.loc[e["setting"] == first_setting(data), "guidance"]
    return e[e["guidance"] == (w.iloc[0] if len(w) else 0.0)]


def varies_guidance(data: AblationData) -> bool:
    return guidance_family(data)["guidance"].nunique() > 1


def varies_sampler(data: AblationData) -> bool:
    return sampler_family(data)["setting"].nunique() > 1


# -- the opening paragraph ----------------------------------------------------------------------------

def answer(data: AblationData) -> str:
    """The answer to the spec's question, computed from the tables, then the budget it holds for."""
    if data.runs.empty or data.evals.empty:
        return "No finished training run with evaluations in this experiment yet, so there is no answer."
    setting = first_setting(data)
    recognizable = _cap(recognizable_answer(recognizable_steps(data, setting), data.arms, setting)) + "."
    sentences = []
    if len(data.arms) > 1:
        at = data.evals[data.evals["setting"] == setting]
        sentences.append(f"On FID with {setting} at the end of training, {arms_answer(at, data.arms)}.")
        if losses_comparable(data):
            sentences.append(f"On final training loss, {arms_answer(data.runs, data.arms, 'final_loss', 'loss')}.")
        sentences.append(recognizable)
    if varies_guidance(data):
        fam = guidance_family(data)
        for arm in [a for a in data.arms if a in set(fam["arm_label"])]:
            words = guidance_answer(fam[fam["arm_label"] == arm])
            sentences.append((f"For {arm}: {words}" if len(data.arms) > 1 else _cap(words)) + ".")
    if varies_sampler(data) and len(data.arms) == 1:
        sentences.append(_cap(settings_answer(sampler_family(data))) + ".")
    if len(data.arms) == 1 and not varies_guidance(data) and not varies_sampler(data):
        e = estimate(data.evals.loc[data.evals["setting"] == setting, "fid"])
        sentences += [f"There is one arm and one setting, so nothing is compared: FID "
                      f"{with_ci(e.mean, e.low, e.high)} with {setting}.", recognizable]
    sentences.append(budget_sentence(data))
    if data.profile == "smoke":
        sentences.append("This is the smoke profile: its numbers check that the pipeline runs end to end and say "
                         "nothing about the question.")
    return " ".join(sentences)


def losses_comparable(data: AblationData) -> bool:
    """Whether the arms minimize the same objective, so that a lower loss means a better fit: not when an
    axis changes the schedule, the prediction target or the weighting (each rescales the loss per t)."""
    return not any(axis.startswith("diffusion.") for axis in data.axes)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def budget_sentence(data: AblationData) -> str:
    r, e = data.runs, data.evals
    seeds = sorted(set(r["seed"]))
    gen, ref = e["num_generated"].dropna(), e["num_reference"].dropna()
    samples = (f"FID from {int(gen.iloc[0]):,} generated against {int(ref.iloc[0]):,} real images"
               if len(gen) and len(ref) else "FID sample counts not logged")
    return (f"Budget: the {data.profile} profile, {_steps(r)} training steps x {_one(r['batch_size'])} images = "
            f"{_one(r['images_seen'])} images seen per run, {_plural(len(r), 'training run')} "
            f"({_plural(len(data.arms), 'arm')} x seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))}, "
            f"{duration(r['seconds'].sum())} of training-run wall time); {samples}, in the feature space of a domain "
            f"classifier, not InceptionV3.")


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


# -- evidence -----------------------------------------------------------------------------------------

CELL_CAPTION = "Mean over seeds [95% CI] where there are 2+ seeds."


def cell(mean: float, low: float, high: float) -> str:
    """A table cell: '51.0 [48.5, 53.5]', or the bare mean without an interval."""
    return f"{num(mean)} [{num(low)}, {num(high)}]" if math.isfinite(low) else num(mean)


def device_sentence(devices: set[str]) -> str:
    kinds = {d.split(":")[0] for d in devices}
    if kinds <= {"cpu", "cuda", "mps"}:
        names = {"cpu": "CPU", "cuda": "GPU", "mps": "Apple GPU"}
        return f"Devices: {', '.join(sorted(devices))}, so these are {' and '.join(names[k] for k in sorted(kinds))}-hours."
    return (f"train.device = {', '.join(sorted(devices))}; the device a run resolved to is not logged, so whether "
            f"these are CPU- or GPU-hours is not recorded.")


def setup_section(data: AblationData) -> Section:
    r, e = data.runs, data.evals
    s = Section("Setup and budget")
    if r.empty:
        s.paragraphs.append("No finished training run.")
        return s
    train_s = r["seconds"].sum()
    eval_s = e["seconds"].sum() if len(e) else 0.0
    s.paragraphs.append(
        f"Experiment {data.experiment}, profile {data.profile}, data set {', '.join(sorted(set(r['dataset'])))}. "
        f"Axes: {' / '.join(data.axes) or 'none (one configuration)'}; arms: {'; '.join(data.arms)}; "
        f"seeds: {', '.join(map(str, sorted(set(r['seed']))))}. Each run trains {_steps(r)} steps of "
        f"{_one(r['batch_size'])} images ({_one(r['images_seen'])} images seen; {int(r['images_seen'].sum()):,} over all "
        f"{len(r)} runs) at {num(r['images_per_second'].mean())} images/s on average.")
    s.paragraphs.append(
        f"Compute: {(train_s + eval_s) / 3600:.3g} device-hours: {duration(train_s)} in training runs (including their "
        f"periodic evaluations) and {duration(eval_s)} in final evaluation runs, wall time summed over runs, so "
        f"parallel jobs add up. {device_sentence(set(r['device']))}")
    gen, ref = e["num_generated"].dropna(), e["num_reference"].dropna()
    acc = r["classifier_accuracy"].dropna()
    held_out = f"held-out accuracy {acc.iloc[0]:.1%}" if len(acc) else "held-out accuracy not logged"
    inception = e["fid_inception"].notna().any()
    why = e["fid_inception_unavailable"].dropna()
    s.paragraphs.append(
        f"Evaluation settings: {', '.join(data.settings)}. Each evaluation generates "
        f"{_one(gen.astype(int)) if len(gen) else 'an unlogged number of'} samples from fixed noise and compares them "
        f"with {_one(ref.astype(int)) if len(ref) else 'an unlogged number of'} real images. FID, KID, precision and "
        f"recall are computed in the feature space of the harness's domain classifier (a small CNN trained on the data "
        f"set; {held_out}), so these FIDs are on that "
        f"classifier's scale and are not comparable with published InceptionV3 FIDs. "
        + ("InceptionV3 FID is logged as fid_inception. " if inception else
           f"InceptionV3 FID is unavailable ({why.iloc[0]}). " if len(why) else "")
        + f"Recognizability is the fraction of samples the classifier gives a top-class probability of at least "
          f"{_one(r['recognizability_threshold'])}; the classifier is confident on some noise too, so read it next to "
          f"FID and the sample grids.")
    notes = []
    if (~r["has_history"]).any():
        reused = r.loc[~r["has_history"], "arm_label"] + " seed " + r.loc[~r["has_history"], "seed"].astype(str)
        notes.append(f"{(~r['has_history']).sum()} training run(s) ({', '.join(reused)}) found their checkpoint already "
                     f"finished by another experiment with the same configuration hash: they log no training loss and "
                     f"no periodic evaluations here, and their wall time does not include the training.")
    if data.missing:
        notes.append(f"{len(data.missing)} planned job(s) have no finished training run: "
                     + "; ".join(f"{j['arm']} seed {j['seed']}" for j in data.missing) + ".")
    if data.parent_status and data.parent_status != "FINISHED":
        notes.append(f"The newest harness run of this experiment is {data.parent_status}.")
    s.paragraphs += notes
    return s


def comparison_section(data: AblationData) -> Section | None:
    """Every metric: the best arm against each other arm (Holm-adjusted), at the first setting."""
    if len(data.arms) < 2 or data.evals.empty:
        return None
    setting = first_setting(data)
    at = data.evals[data.evals["setting"] == setting]
    s = Section(f"Arms compared ({setting}, end of training)")
    rows = []
    for metric in [m for m in METRICS if at[m].notna().any()]:
        lower = LOWER_IS_BETTER[metric]
        means = at.groupby("arm_label")[metric].mean().dropna()
        if len(means) < 2:
            continue
        best = means.idxmin() if lower else means.idxmax()
        for c in compare_to_reference(at, metric, best, [a for a in data.arms if a != best and a in means.index],
                                      lower_is_better=lower):
            verdict = ("one seed: no test" if c.test == "none" else f"{c.winner} better" if c.winner else NO_DIFFERENCE)
            rows.append([metric, f"{c.a} - {c.b}", cell(c.diff.mean, c.diff.low, c.diff.high), c.test,
                         "" if math.isnan(c.p) else f"{c.p:.3g}", verdict])
    s.paragraphs.append("Each row compares the arm with the best mean on that metric (second) with another arm (first): "
                        "the difference of means over seeds with its 95% interval, a paired t-test where both arms "
                        "have the same seeds (else Welch's), p Holm-adjusted per metric. A winner is named only when "
                        "p < 0.05 and the interval excludes zero. Lower is better for FID and KID, higher for the rest.")
    s.tables.append(Table(["metric", "arms", "difference [95% CI]", "test", "p", "verdict"], rows))
    return s


def settings_section(data: AblationData) -> Section | None:
    if not varies_sampler(data):
        return None
    fam = sampler_family(data)
    s = Section("Sampler settings: quality against network evaluations")
    front = settings_front(fam)
    s.paragraphs.append("Pareto front (no setting is both cheaper and better): "
                        + "; ".join(f"{r.setting} ({num(r.nfe)} NFE, FID {num(r.fid)})" for r in front.itertuples())
                        + ".")
    summary = summarize(fam, "fid", ["setting", "arm_label"])
    nfe = fam.groupby("setting")["nfe"].mean()
    rows = [[r.setting, r.arm_label, num(nfe[r.setting]), cell(r.mean, r.low, r.high), r.n]
            for r in summary.itertuples()]
    s.tables.append(Table(["setting", "arm", "NFE", "FID", "seeds"], rows, CELL_CAPTION))
    fig = figures.fid_vs_nfe(fam)
    if fig is not None:
        s.pictures.append(Picture("fid_vs_nfe", "FID against network evaluations per sample (log scale), one line per "
                                  "sampler; error bars: 95% CI over seeds; dashed: the Pareto front.",
                                  figures.to_png(fig)))
    return s


def guidance_section(data: AblationData) -> Section | None:
    if not varies_guidance(data):
        return None
    fam = guidance_family(data)
    s = Section("Guidance trade-off")
    metrics = ("class_accuracy", "fid", "recognizability")
    tables = [summarize(fam, m, ["arm_label", "guidance"]).set_index(["arm_label", "guidance"]) for m in metrics]
    rows = [[arm, f"{w:g}", int(tables[0].at[(arm, w), "n"])]
            + [cell(*t.loc[(arm, w), ["mean", "low", "high"]]) if (arm, w) in t.index else "" for t in tables]
            for arm, w in tables[0].index]
    s.paragraphs.append("w = 0 is no guidance; the guided output is (1 + w) cond - w uncond.")
    s.tables.append(Table(["arm", "w", "seeds", *metrics], rows, CELL_CAPTION))
    fig = figures.guidance_tradeoff(fam, data.arms)
    if fig is not None:
        s.pictures.append(Picture("guidance", "FID and class accuracy against the guidance weight w (bands: 95% CI over "
                                  "seeds), and the two against each other.", figures.to_png(fig)))
    return s


def final_metrics_section(data: AblationData) -> Section | None:
    if data.evals.empty:
        return None
    s = Section("Final metrics")
    metrics = [m for m in (*METRICS, "nfe", "sample_seconds") if data.evals[m].notna().any()]
    tables = {m: summarize(data.evals, m, ["setting", "arm_label"]).set_index(["setting", "arm_label"]) for m in metrics}
    keys = tables[metrics[0]].index
    rows = [[setting, arm, int(tables[metrics[0]].at[(setting, arm), "n"])]
            + [cell(*tables[m].loc[(setting, arm), ["mean", "low", "high"]])
               if (setting, arm) in tables[m].index else "" for m in metrics] for setting, arm in keys]
    s.tables.append(Table(["setting", "arm", "seeds", *metrics], rows, "At the last training step. " + CELL_CAPTION))
    return s


def training_section(data: AblationData) -> Section | None:
    if data.runs.empty:
        return None
    s = Section("Training loss")
    final = summarize(data.runs, "final_loss", ["arm_label"]).set_index("arm_label")
    s.paragraphs.append("Final training loss (mean of the last log interval): " + "; ".join(
        f"{a} {with_ci(*final.loc[a, ['mean', 'low', 'high']])}" for a in data.arms if a in final.index) + ".")
    if not losses_comparable(data):
        s.paragraphs.append("The arms differ in the diffusion objective (schedule, prediction target or loss "
                            "weighting), so their losses are on different scales: compare the shapes of the curves, "
                            "not their levels.")
    fig = figures.loss_curves(data.loss, data.arms)
    if fig is not None:
        s.pictures.append(Picture("loss", "Training loss against step (running mean over ~1% of training); band: 95% "
                                  "CI over seeds.", figures.to_png(fig)))
    fig = figures.bucket_losses(data.buckets, data.arms)
    if fig is not None:
        s.pictures.append(Picture("loss_by_timestep", "Loss per tenth of the timestep range over the last quarter of "
                                  "training: where in t each arm's remaining error lies.", figures.to_png(fig)))
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
    fig = figures.metric_curves(data.curves, setting, metrics, data.arms, thresholds={"recognizability": threshold})
    if fig is not None:
        s.pictures.append(Picture("quality_over_training", f"Metrics of the periodic evaluations with {setting}; bands: "
                                  f"95% CI over seeds; dashed: the recognizability threshold {threshold:g}.",
                                  figures.to_png(fig)))
    s.tables.append(Table(["arm", "seed", "first step with recognizability >= threshold"], [
        [r.arm_label, r.seed, f"{int(r.step):,}" if pd.notna(r.step) else "not logged here" if not r.logged
         else "not within this budget"] for r in steps.itertuples()]))
    return s


def samples_section(data: AblationData) -> Section | None:
    setting = first_setting(data)
    if setting is None or data.runs.empty:
        return None
    s = Section("Samples")
    fig = figures.sample_strip(data.grids, setting, data.arms)
    if fig is not None:
        s.pictures.append(Picture("samples_over_training", f"Samples with {setting} at evaluation steps over training, "
                                  "one row per arm (lowest seed); the same noise x_T in every frame.",
                                  figures.to_png(fig)))
    if len(data.settings) > 1:
        fig = figures.final_samples(data.grids, data.settings, data.arms)
        if fig is not None:
            s.pictures.append(Picture("samples_by_setting", "The last saved sample grid of each evaluation setting "
                                      "(same noise), one row per arm (lowest seed).", figures.to_png(fig)))
    if not s.pictures:
        dirs = sorted({str(Path(c).parent / "grids") for c in data.runs["checkpoint"] if c})
        s.paragraphs.append("No sample grids found on disk" + (f" (looked in {', '.join(dirs)})." if dirs else "."))
    return s


SECTIONS: tuple[Callable[[AblationData], Section | None], ...] = (
    setup_section, comparison_section, settings_section, guidance_section, final_metrics_section,
    progress_section, samples_section, training_section,
)


def build_document(data: AblationData, *, question: str | None = None) -> Document:
    sections = [s for build in SECTIONS if (s := build(data)) is not None]
    return Document(title=f"{data.experiment}: ablation report ({data.profile} profile)",
                    question=question or data.question or "(no question recorded)", answer=answer(data),
                    sections=sections,
                    footer=f"Built from MLflow experiment {data.experiment}, newest harness run {data.parent_run_id}, "
                           f"code {', '.join(sorted(set(data.runs['commit'])))[:200] if len(data.runs) else 'n/a'}.")


# -- files and MLflow ---------------------------------------------------------------------------------

def write_report(store: MlflowStore, experiment: str, out_dir: Path, *, spec_path: str | None = None) -> ReportPaths:
    """Write ``out_dir/index.html`` (self-contained) and ``out_dir/report.md`` with its PNG figures beside it.

    ``out_dir`` is the report's own directory, e.g. ``reports/<spec name>``. ``spec_path``: the spec whose
    question heads the report (default: the question recorded with the newest harness run).
    """
    question = None
    if spec_path is not None:
        from harness.spec import load_spec

        question = load_spec(spec_path).question
    doc = build_document(load_experiment(store, experiment), question=question)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for section in doc.sections:
        for pic in section.pictures:
            (out_dir / f"{pic.name}.png").write_bytes(pic.png)
    paths = ReportPaths(html=out_dir / "index.html", md=out_dir / "report.md")
    paths.md.write_text(to_markdown(doc))
    paths.html.write_text(to_html(doc))
    return paths


def log_report(store: MlflowStore, experiment: str, paths: ReportPaths) -> str:
    """Log the report (html, md and the md's PNGs) under ``report/`` of the experiment's newest harness run;
    returns that run's id."""
    exp = store.client.get_experiment_by_name(experiment)
    parents = store.runs(exp.experiment_id, {ROLE: "ablation"}) if exp is not None else []
    if not parents:
        raise LookupError(f"experiment {experiment!r} has no harness run to attach a report to")
    run_id = parents[0].info.run_id
    pngs = re.findall(r"\]\(([^)/]+\.png)\)", paths.md.read_text())  # the figures report.md links to
    for path in [paths.html, paths.md, *(paths.md.parent / name for name in dict.fromkeys(pngs))]:
        store.client.log_artifact(run_id, str(path), "report")
    return run_id
