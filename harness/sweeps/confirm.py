"""Confirmation: after the search, the ``search.confirm.top`` best trials are trained again with fresh seeds.

The best of N trials scored on noisy values is biased toward a lucky draw (the winner's curse), so its
search value overstates what the configuration does; the same configuration on seeds that played no part
in the selection gives an unbiased value and a confidence interval. One job per (trial, seed): a training run
below the sweep's parent, tagged with the study, the trial and its rank (``CONFIRM_RANK``); a finished one is
never trained again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from ..config.schema import CONFIRM_RANK, ROLE, SEED, STUDY, TRIAL
from ..orchestration.jobs import run_job
from ..orchestration.tracking import MlflowStore, MlflowTracker
from ..result import EvalResult
from .objective import WorkerTask, measured, sweep_task
from .search import Sweep


@dataclass(frozen=True)
class ConfirmJob:
    trial: int  # the search's trial number
    rank: int  # its rank in the search, 1 = best
    params: dict[str, Any]
    seed: int


def confirm_jobs(study: optuna.Study, sweep: Sweep) -> list[ConfirmJob]:
    """The top trials by their search value (one per distinct point: a sampler may propose one twice) x seeds."""
    if sweep.search.confirm is None:
        return []
    maximize = sweep.directions[0] == "maximize"
    complete = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: (-t.value if maximize else t.value, t.number),
    )
    top, seen = [], set()
    for t in complete:
        point = tuple(sorted((k, repr(v)) for k, v in t.params.items()))
        if point not in seen:
            seen.add(point)
            top.append(t)
    top = top[: sweep.search.confirm.top]
    return [
        ConfirmJob(t.number, rank, dict(t.params), seed)
        for rank, t in enumerate(top, 1)
        for seed in sweep.search.confirm.seeds
    ]


def confirm_runs(store: MlflowStore, experiment_id: str, study: str) -> list:
    """The training runs of a study's confirmations (newest first): those that carry a confirmation rank."""
    return [r for r in store.runs(experiment_id, {ROLE: "train", STUDY: study}) if CONFIRM_RANK in r.data.tags]


def run_confirmation(
    job: ConfirmJob, sweep: Sweep, task: WorkerTask, store: MlflowStore, root, data
) -> EvalResult | None:
    """Train and evaluate one (trial, fresh seed); None when a finished run of it exists already."""
    mine = [
        r
        for r in confirm_runs(store, task.experiment_id, sweep.study_name)
        if r.data.tags.get(TRIAL) == str(job.trial) and r.data.tags.get(SEED) == str(job.seed)
    ]
    done = [r for r in mine if r.info.status == "FINISHED"]
    if done:
        MlflowTracker(store.client, done[0].info.run_id).set_tags({CONFIRM_RANK: job.rank})  # ranks move on resume
        return None
    config = measured(sweep.resolve(job.params, device=task.device, seed=job.seed))
    tags = {TRIAL: job.trial, CONFIRM_RANK: job.rank}
    return run_job(sweep_task(sweep, task, config, job.params, task.parent_run_id, tags), config, data=data).evals[0]
