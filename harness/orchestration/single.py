"""``harness train``: one configuration, as a job of its own experiment (``jobs.run_job``, so its runs look
like any other's and a finished one is reused, an unfinished one resumed), or untracked."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from .jobs import Outcome, Task, run_job
from .tracking import MlflowStore


def train_tracked(config: Config, run_dir: Path, store: MlflowStore, experiment: str, force: bool = False) -> Outcome:
    """The job of ``config`` in ``experiment``: arm ``{}``, no parent, checkpoints in ``run_dir``, a progress bar;
    ``force`` retrains a finished run and moves another config's checkpoint aside (``Task.force``)."""
    task = Task(
        config.model_dump_json(),
        {},
        config.train.seed,
        experiment,
        store.experiment_id(experiment),
        "",
        store.uri,
        force=force,
        threads=0,
        run_dir=str(run_dir),
        progress=None,
    )
    return run_job(task, config)


def train_untracked(config: Config, run_dir: Path, force: bool = False) -> dict:
    """Train and evaluate with nothing tracked (``--no-track``); the summary ``harness train --json`` writes.
    ``force``: another config's checkpoint in ``run_dir`` is moved aside rather than refused."""
    from ..device import resolve_device
    from ..evaluation.evaluate import Evaluator
    from ..tracker import NullTracker
    from ..training.data import load_dataset
    from ..training.train import claim_run_dir, train

    claim_run_dir(config, run_dir, force=force)  # before the data set and classifiers load: a refusal is quick

    data = load_dataset(config.data.dataset, config.data.root, config.data.download)
    evaluator = Evaluator(config, data, device=resolve_device(config.train.device), out_dir=run_dir)
    return train(config, NullTracker(), run_dir=run_dir, data=data, evaluator=evaluator).to_json()
