"""An experiment's report: the question and its answer in one paragraph, then the evidence.

``build_document`` works on ``AblationData`` alone (tests feed it fixture tables); ``write_report``
loads from MLflow and writes ``index.html`` (self-contained) and ``report.md`` (PNG files beside it);
``log_report`` attaches them to the newest ``harness run`` of the experiment.

The evidence is ``sections.SECTIONS``, a list of builders with one signature, ``(AblationData) ->
Section | None``; a sweep report will be one more builder appended there.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from harness.config.schema import ROLE
from harness.orchestration.tracking import MlflowStore

from .crossing import crossing_entries
from .literature import literature_answers, literature_section
from .load import AblationData, load_experiment
from .opening import answer
from .render import Document, to_html, to_markdown
from .sections import (  # noqa: F401 - re-exported: tests and callers build single sections
    SECTIONS,
    comparison_section,
    final_metrics_section,
    guidance_section,
    progress_section,
    samples_section,
    sections_for,
    settings_section,
    setup_section,
    training_section,
)
from .verdicts import verdicts


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    md: Path
    answers: Path | None = None  # answers.json (ablation reports)


def build_document(
    data: AblationData, *, question: str | None = None, margins: dict[str, float] | None = None, literature=()
) -> Document:
    """``literature``: the spec's entries (config/literature.py), checked in "Against the literature"."""
    builders = [*sections_for(margins), lambda d: literature_section(d, list(literature))]
    sections = [s for build in builders if (s := build(data)) is not None]
    return Document(
        title=f"{data.experiment}: ablation report ({data.profile} profile)",
        question=question or data.question or "(no question recorded)",
        answer=answer(data, margins=margins),
        sections=sections,
        footer=(
            f"Built from MLflow experiment {data.experiment}, newest harness run {data.parent_run_id}; "
            if data.parent_run_id
            else f"Built from experiment {data.experiment}; "
        )
        + f"{provenance(data)}.",
    )


def provenance(data: AblationData) -> str:
    """The code versions (harness.code_version: training code on training runs, evaluation code on evaluations)
    and git commits of every run the report uses."""

    def names(*frames) -> str:
        return ", ".join(sorted(set().union(*(set(f.fillna("unknown")) for f in frames)))) or "n/a"

    return (
        f"training code {names(data.runs['code_version'])}; evaluation code {names(data.evals['code_version'])}; "
        f"git commit {names(data.runs['commit'], data.evals['commit'])}"
    )


# -- files and MLflow ---------------------------------------------------------------------------------


def write_report(
    store: MlflowStore, experiment: str, out_dir: Path, *, spec_path: str | None = None, profile: str | None = None
) -> ReportPaths:
    """Write ``out_dir/index.html`` (self-contained), ``out_dir/report.md`` with its PNG figures beside it, and
    ``out_dir/answers.json``.

    ``out_dir`` is the report's own directory, e.g. ``reports/<spec name>``. ``spec_path``: the spec whose
    question heads the report (default: the question recorded with the newest harness run). ``profile``: the
    newest harness run of that profile instead of the newest of any. The store's
    tables go through the results table first (``harness export``), so ``harness report --table`` on an
    exported table writes this same report: one path from runs to statistics.
    """
    from .table import from_table, to_table

    data = from_table(to_table(load_experiment(store, experiment, profile=profile)))
    return write_data_report(data, out_dir, spec_path=spec_path)


def write_data_report(data: AblationData, out_dir: Path, *, spec_path: str | None = None) -> ReportPaths:
    """The report of ``data`` in ``out_dir``; the spec at ``spec_path`` (if any) gives the question and the
    equivalence margins."""
    question, margins, literature = None, None, []
    if spec_path is not None:
        from harness.config.spec import load_spec

        spec = load_spec(spec_path)
        question, margins, literature = spec.question, spec.margins, spec.literature
    doc = build_document(data, question=question, margins=margins, literature=literature)
    paths = save_document(doc, out_dir)
    answers = paths.md.parent / "answers.json"
    entries = report_answers(data, margins=margins) + literature_answers(data, literature)
    answers.write_text(json.dumps(_plain(entries), indent=2, allow_nan=False) + "\n")
    return ReportPaths(html=paths.html, md=paths.md, answers=answers)


def report_answers(data: AblationData, *, margins: dict[str, float] | None = None) -> list[dict]:
    """The entries of answers.json: one per comparison the answer makes (``analysis.verdicts.verdicts``:
    metric, the arms or settings compared, estimate, interval, p, p_adjusted, winner or null, and the reason
    when there is none), then one per arm for "when does it become recognizable"
    (``analysis.crossing.crossing_entries``: median_step or null, the seeds that reached it)."""
    return verdicts(data, margins=margins) + crossing_entries(data)


def _plain(value):
    """JSON values: numpy scalars as Python numbers, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_document(doc: Document, out_dir: Path) -> ReportPaths:
    """``out_dir/index.html`` (self-contained) and ``out_dir/report.md`` with its PNG figures beside it."""
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
    """Log the report (html, md and the md's PNGs) under ``report/`` of the experiment's newest harness run,
    or of a new run of role ``report`` when it has none (``harness train`` runs alone); returns that run's id."""
    exp = store.client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no experiment {experiment!r} to attach a report to")
    parents = store.runs(exp.experiment_id, {ROLE: "ablation"})
    if parents:
        return log_to_run(store, parents[0].info.run_id, paths)
    run = store.start_run(exp.experiment_id, "report", {ROLE: "report"})
    log_to_run(store, run.run_id, paths)
    run.finish("FINISHED")
    return run.run_id


def log_to_run(store: MlflowStore, run_id: str, paths: ReportPaths) -> str:
    """Log the report (html, md and the md's PNGs) under ``report/`` of the run ``run_id``; returns it."""
    pngs = re.findall(r"\]\(([^)/]+\.png)\)", paths.md.read_text())  # the figures report.md links to
    extra = [paths.answers] if paths.answers is not None else []
    for path in [paths.html, paths.md, *extra, *(paths.md.parent / name for name in dict.fromkeys(pngs))]:
        store.client.log_artifact(run_id, str(path), "report")
    return run_id
