"""A sweep's report: the question, the confirmed best configuration, then the evidence (confirmation,
history, slices, importances, every trial, the budget), as HTML and Markdown like an ablation report.

The winner is chosen on confirmation runs (fresh seeds), never on the search values: the best of N noisy
trials is optimistic (the winner's curse). The statistics and their wording are the ablation report's
(``stats.compare_to_reference``, ``words.comparison_sentence``): a winner needs a test, p < 0.05 after Holm
and an interval that excludes zero against every other confirmed trial, since ranking the confirmations
selects again.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.orchestration.tracking import MlflowStore

from . import sweep_figures
from .figures import to_png
from .literature import context_section
from .opening import _cap, _plural, duration
from .render import Document, Picture, Section, Table
from .report import ReportPaths, log_to_run, save_document
from .sections import cell
from .sweep_answers import STATES, answer, config_text, confirmed_table, counts, search_value, trial_counts
from .sweep_load import SweepData, load_sweep_data, ranked_trials, trial_row
from .words import metric_label, num, seeds


def confirmation_section(data: SweepData) -> Section:
    o, unit = data.objective, metric_label(data.objective.metric)
    s = Section("Best configuration and confirmation")
    confirmed = confirmed_table(data)
    trials = data.trials.set_index("trial")
    if confirmed.empty:
        s.paragraphs.append(
            "No confirmation runs: the values below are the search's own, each the "
            f"{data.aggregate} over a trial's seeds ({', '.join(map(str, data.seeds)) or 'not recorded'}), "
            "and the best of them is biased in its favour (the winner's curse). The top trials:"
        )
        rows = [
            [str(r.trial), config_text(data, trials.loc[r.trial]), search_value(data, trials.loc[r.trial])]
            for r in ranked_trials(data).head(5).itertuples()
        ]
        s.tables.append(Table(["trial", "configuration", f"{unit} in the search"], rows))
        return s
    s.paragraphs.append(
        f"Each confirmed trial was trained again with fresh seeds ({', '.join(map(str, data.confirm_seeds))}), "
        f"none of them among the search's ({', '.join(map(str, data.seeds)) or 'not recorded'}): a re-measurement "
        f"of the search's top {len(confirmed)}. The search value is what selected each trial; its confirmed value "
        f"does not share the search's noise, so the gap (confirmed - search) shows how much of the search value "
        f"was favourable noise (the winner's curse). Ranking the confirmed values again selects anew: the best of "
        f"{len(confirmed)} re-measurements is again optimistic, so a best is named only when it beats every other "
        f"confirmed trial (paired over seeds, Holm-adjusted). Confirmed: mean over confirmation seeds "
        f"[95% t-interval] where there are 2+."
    )
    rows = []
    for r in confirmed.itertuples():
        row = trial_row(data, r.trial)
        gap = r.mean - row[o.metric]
        rows.append(
            [
                str(r.trial),
                "" if r.rank is None or pd.isna(r.rank) else str(int(r.rank)),
                config_text(data, row),
                search_value(data, row),
                f"{cell(r.mean, r.low, r.high)} ({seeds(r.n)})",
                num(gap),
            ]
        )
    header = ["trial", "search rank", "configuration", f"{unit} in the search", f"{unit} confirmed", f"gap ({unit})"]
    s.tables.append(Table(header, rows, caption=f"{unit}: {'lower' if o.lower_is_better else 'higher'} is better."))
    if caveat := fingerprint_sentence(data):
        s.paragraphs.append(caveat)
    return s


def fingerprint_sentence(data: SweepData) -> str | None:
    prints = data.trainings["fingerprint"].dropna().unique()
    if len(prints) < 2:
        return None
    return (
        f"These FIDs come from {len(prints)} feature spaces (domain classifiers {', '.join(sorted(prints))}): "
        f"a FID compares only with FIDs of the same classifier."
    )


def history_section(data: SweepData) -> Section | None:
    fig = sweep_figures.optimization_history(data, confirmed_table(data))
    if fig is None:
        return None
    o = data.objective
    ranked = ranked_trials(data)
    s = Section("Optimization history")
    if len(ranked):
        best = ranked.iloc[0]
        s.paragraphs.append(
            f"The best search value of {metric_label(o.metric)}, {num(best[o.metric])}, came at trial "
            f"{best['trial']} of {len(data.trials)} (numbered from 0). Pruned trials are drawn at their last "
            f"periodic evaluation, which came before the end of training and is not comparable with a final value."
        )
    s.pictures.append(
        Picture("optimization_history", f"{metric_label(o.metric)} per trial and the best so far.", to_png(fig))
    )
    return s


def slices_section(data: SweepData) -> Section | None:
    fig = sweep_figures.parameter_slices(data)
    if fig is None:
        return None
    s = Section("Parameter slices")
    s.paragraphs.append(
        f"Each complete trial's {metric_label(data.objective.metric)} against each searched parameter, coloured "
        f"by trial number (a sampler that learns moves later trials into the good region). Searched: "
        + "; ".join(_space_words(k, data.space.get(k, {})) for k in data.params)
        + "."
    )
    s.pictures.append(Picture("parameter_slices", "Objective against each searched parameter.", to_png(fig)))
    return s


def _space_words(key: str, spec: dict) -> str:
    if spec.get("type") == "categorical":
        return f"{key} in {{{', '.join(map(str, spec.get('choices', [])))}}}"
    if "low" in spec:
        return f"{key} from {num(spec['low'])} to {num(spec['high'])}" + (" (log scale)" if spec.get("log") else "")
    return key


# fANOVA (Hutter et al. 2014) fits a random forest to the complete trials and splits its variance among the
# parameters; on a handful of points the forest fits the trials' noise, so shares drawn from fewer complete
# trials than this are not shown (the search's own seeds average only a little of that noise away).
MIN_TRIALS_FOR_IMPORTANCES = 10


def importances_section(data: SweepData) -> Section:
    s = Section("Parameter importances")
    complete = counts(data)["COMPLETE"]
    if complete < MIN_TRIALS_FOR_IMPORTANCES:
        s.paragraphs.append(
            f"Not shown: {_plural(complete, 'complete trial')}, fewer than the {MIN_TRIALS_FOR_IMPORTANCES} this "
            "report asks of Optuna's fANOVA importance, which fits a random forest to the complete trials and on "
            "so few points would mostly apportion their noise among the parameters."
        )
        return s
    s.paragraphs.append(
        f"How much of the objective's variance over the {complete} complete trials each parameter explains "
        "(Optuna's fANOVA importance, drawn by the sweep from its study): a rough guide, without an interval."
    )
    names = (
        ["param_importances"]
        if len(data.objectives) == 1
        else [f"param_importances_{o.metric}" for o in data.objectives]
    )
    for name in names:
        if name in data.importances:
            s.pictures.append(Picture(name, f"Parameter importances ({name}).", data.importances[name]))
        elif name in data.unavailable:
            s.paragraphs.append(f"{name} is unavailable: the sweep could not draw it ({data.unavailable[name]}).")
        else:
            s.paragraphs.append(f"{name} was not logged on the sweep's parent run (the sweep may not have finished).")
    return s


def trials_section(data: SweepData) -> Section:
    s = Section("Every trial")
    metrics = [o.metric for o in data.objectives]
    rows = []
    for _, r in data.trials.iterrows():
        values = [
            search_value(data, r, m)
            if pd.notna(r[m])
            else f"last periodic {num(r[f'last_{m}'])}"
            if pd.notna(r[f"last_{m}"])
            else ""
            for m in metrics
        ]
        rows.append(
            [
                str(r["trial"]),
                STATES.get(r["state"], r["state"]) + (" (best)" if r["best"] else ""),
                config_text(data, r),
                *values,
                r["stopped"],
            ]
        )
    header = ["trial", "state", "configuration", *(metric_label(m) for m in metrics), "why it stopped"]
    s.tables.append(
        Table(header, rows, caption="Search values: aggregate over the trial's seeds at the end of training.")
    )
    return s


def budget_section(data: SweepData) -> Section:
    s = Section("Setup and budget")
    t = data.trainings
    search, confirm = t[t["role"] == "search"], t[t["role"] == "confirm"]
    steps, secs = t["steps"], t["seconds"]
    batch = (data.base.get("train") or {}).get("batch_size")
    s.paragraphs.append(
        f"Experiment {data.experiment}, study {data.study} ({data.profile} profile). Sampler {data.sampler}, pruner "
        f"{data.pruner}; objective "
        + ", ".join(f"{metric_label(o.metric)} ({o.direction})" for o in data.objectives)
        + f" with the evaluation setting {data.setting or 'not recorded'}, the {data.aggregate} over each trial's "
        f"seeds ({', '.join(map(str, data.seeds)) or 'not recorded'}); confirmation seeds: "
        f"{', '.join(map(str, data.confirm_seeds)) or 'none'}. {basis_sentence(data)} Optuna storage: {data.storage}."
    )
    known = steps.notna().sum()
    s.paragraphs.append(
        f"Budget spent: {trial_counts(data)}; {_plural(len(t), 'training')} ({len(search)} in the search, "
        f"{len(confirm)} confirmation); {int(steps.sum()):,} training steps"
        + (f" of {batch} images each" if batch else "")
        + (f" ({len(t) - known} training(s) without a logged step count are not included)" if known < len(t) else "")
        + f"; {duration(secs.sum())} of training wall time summed over trainings"
        + (f" ({secs.notna().sum()} of {len(t)} logged train/seconds)" if secs.notna().sum() < len(t) else "")
        + "."
    )
    return s


def basis_sentence(data: SweepData) -> str:
    """What every score was computed on: the data set and the sample counts N (FID depends on N)."""
    dataset = (data.base.get("data") or {}).get("dataset", "an unrecorded data set")
    counts = data.trainings.dropna(subset=["num_generated", "num_reference"])
    counts = counts.drop_duplicates(["num_generated", "num_reference"])
    if len(counts):
        n = "; ".join(
            f"N = {int(c.num_generated):,} generated samples against {int(c.num_reference):,} reference images"
            for c in counts.itertuples()
        )
    elif num_samples := (data.base.get("eval") or {}).get("num_samples"):
        n = f"N = {int(num_samples):,} generated samples (eval.num_samples; the reference count is not logged)"
    else:
        n = "sample counts not logged"
    mixed = " (FIDs on different N are not comparable)" if len(counts) > 1 else ""
    return f"Data set {dataset}; scores from {n}{mixed}, in the domain classifier's features, not InceptionV3."


SECTIONS = (confirmation_section, history_section, slices_section, importances_section, trials_section, budget_section)


# -- the document, files and MLflow -----------------------------------------------------------------------


def build_sweep_document(data: SweepData, *, question: str | None = None, literature=()) -> Document:
    """``literature``: the spec's entries (config/literature.py), shown as context after the evidence."""
    sections = [s for build in SECTIONS if (s := build(data)) is not None]
    sections += [s for s in [context_section(list(literature))] if s is not None]
    others = [x for x in data.studies if x != data.study]
    return Document(
        title=f"{data.experiment}: sweep report (study {data.study})",
        question=question or data.question or "(no question recorded)",
        answer=_cap(answer(data)),
        sections=sections,
        footer=f"Built from MLflow experiment {data.experiment}, study {data.study}, parent run {data.parent_run_id}"
        + (f" (other studies here: {', '.join(others)})" if others else "")
        + f"; code version {', '.join(data.code_versions) or 'unknown'}; git commit "
        f"{', '.join(data.commits) or 'unknown'}.",
    )


def write_sweep_report(
    store: MlflowStore,
    experiment: str,
    out_dir: Path,
    *,
    study: str | None = None,
    profile: str | None = None,
    question: str | None = None,
    literature=(),
) -> tuple[ReportPaths, SweepData]:
    """Write ``out_dir/index.html`` and ``out_dir/report.md`` (PNGs beside it) for one study (default: the
    newest); raises ``NothingToReport`` before writing anything when the experiment holds no such sweep."""
    data = load_sweep_data(store, experiment, study=study, profile=profile)
    return save_document(build_sweep_document(data, question=question, literature=literature), out_dir), data


def log_sweep_report(store: MlflowStore, data: SweepData, paths: ReportPaths) -> str:
    """Log the report under ``report/`` of the study's parent run (as ablation reports are); returns its id."""
    return log_to_run(store, data.parent_run_id, paths)
