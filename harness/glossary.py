"""The words the harness prints, defined once: ``harness --help`` shows them and docs/glossary.md
repeats them (tests/test_glossary.py keeps the two equal)."""

from __future__ import annotations

import textwrap

GLOSSARY: dict[str, str] = {
    "spec": "a YAML file (experiments/*.yaml) or a `-m` command line: a question, a base config, axes, seeds, "
    "sampler settings and profiles",
    "arm": "one combination of the axes' values (e.g. diffusion.schedule=cosine); arms are what a report compares",
    "seed": "one training of an arm from a different random seed; seeds give the intervals and tests",
    "job": "one arm x one seed: one trained model, one MLflow training run",
    "setting": "one way to sample from a trained model (sampler, steps, eta, guidance w, ...); "
    "evaluating a new setting never retrains",
    "label": "a setting's short name: ddim-50-eta0-w2 is DDIM, 50 steps, eta = 0, guidance w = 2; "
    "extra fields append (-cg3: classifier guidance s = 3)",
    "profile": "a named budget of a spec: smoke (checks the pipeline in about a minute, answers nothing), "
    "quick (a 2-core CPU, tens of minutes), full (a GPU)",
    "config hash": "12 hex digits naming a job's full training config; a finished hash is reused, never retrained",
    "NFE": "network evaluations per sample, counted as batch rows (a classifier-free-guided step counts 2)",
}


def glossary_text(width: int = 100) -> str:
    """The glossary as aligned lines for a terminal (``harness --help``'s epilog)."""
    pad = max(map(len, GLOSSARY)) + 4
    return "\n".join(
        textwrap.fill(meaning, width, initial_indent=f"  {term:<{pad - 2}}", subsequent_indent=" " * pad)
        for term, meaning in GLOSSARY.items()
    )
