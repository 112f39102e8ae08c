"""The search space: parameter distributions by ``type``, the objective metrics, Optuna's samplers and
pruners as plain dicts that specs name by key."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import (
    TrainConfig,
)
from ..schema import METRICS as SCHEMA_METRICS

# What a trial can be scored on: every evaluation metric but the bookkeeping ones, in its natural direction
# (lower is better for FID and KID, and for the costs NFE and sampling seconds).
NOT_OBJECTIVES = ("kid_std", "num_generated", "num_reference")
METRICS = {
    name: "maximize" if m.lower_is_better is False else "minimize"
    for name, m in SCHEMA_METRICS.items()
    if name not in NOT_OBJECTIVES
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- distributions: one class per ``type``, each knows its Optuna distribution -----------------------


class FloatParam(_Strict):
    """Uniform on [low, high]; ``log: true`` is log-uniform; ``step`` makes it a grid (not with log)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def distribution(self) -> FloatDistribution:
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def probes(self) -> list[Any]:  # values checked against the configuration before anything runs
        return [self.low, self.high]


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = 1
    log: bool = False

    def distribution(self) -> IntDistribution:
        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def probes(self) -> list[Any]:
        return [self.low, self.high]


class CategoricalParam(_Strict):
    # Optuna stores choices as they are: scalars only (a list such as a channel_mult is not one).
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _scalars(cls, v):
        for c in v:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise ValueError(f"choices are numbers, strings, booleans or null; {c!r} is not")
        return v

    def distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution(self.choices)

    def probes(self) -> list[Any]:
        return list(self.choices)


DISTRIBUTIONS: dict[str, type[_Strict]] = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}


def grid_size(dist) -> int | None:
    """Number of points of a distribution, None when continuous."""
    if isinstance(dist, CategoricalDistribution):
        return len(dist.choices)
    if isinstance(dist, IntDistribution):
        return (dist.high - dist.low) // dist.step + 1
    if dist.step is not None:
        return int(round((dist.high - dist.low) / dist.step)) + 1
    return None


# -- samplers and pruners: plain dicts, specs name them by key ------------------------------------------


def _startup(n_trials: int) -> int:
    # Optuna's default is 10 random trials before modelling; a 12-trial sweep would be mostly random.
    return max(2, min(10, n_trials // 3))


def _tpe(seed: int, n_trials: int):
    # constant_liar: running trials count as bad guesses, so parallel workers spread out.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=_startup(n_trials), multivariate=True, constant_liar=True
    )


def _gp(seed: int, n_trials: int):
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=_startup(n_trials))


def _cmaes(seed: int, n_trials: int):
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=_startup(n_trials))


def _random(seed: int, n_trials: int):
    return optuna.samplers.RandomSampler(seed=seed)


def _bruteforce(seed: int, n_trials: int):
    return optuna.samplers.BruteForceSampler(seed=seed)


SAMPLERS: dict[str, Callable[[int, int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "gp": _gp,
    "cmaes": _cmaes,
    "random": _random,
    "bruteforce": _bruteforce,
}
SINGLE_OBJECTIVE_SAMPLERS = {"cmaes"}  # CMA-ES optimizes one value


# A pruner sees ``n_seeds`` trainings one after the other (``Sweep.prune_step``): its resources are steps
# of that sequence.
def _median(train: TrainConfig, n_seeds: int, *, n_startup_trials: int = 5, n_warmup_steps: int = 0):
    return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)


def _hyperband(train: TrainConfig, n_seeds: int, *, min_resource: int | None = None, reduction_factor: int = 3):
    # A resource is a training step; the first rung is the first periodic evaluation.
    return optuna.pruners.HyperbandPruner(
        min_resource=min_resource or train.eval_every,
        max_resource=train.steps * n_seeds,
        reduction_factor=reduction_factor,
    )


def _threshold(
    train: TrainConfig, n_seeds: int, *, lower: float | None = None, upper: float | None = None, n_warmup_steps: int = 0
):
    return optuna.pruners.ThresholdPruner(lower=lower, upper=upper, n_warmup_steps=n_warmup_steps)


def _none(train: TrainConfig, n_seeds: int):
    return optuna.pruners.NopPruner()


PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": _median,
    "hyperband": _hyperband,
    "threshold": _threshold,
    "none": _none,
}


def _pruner_options(name: str) -> list[str]:
    return [p for p in inspect.signature(PRUNERS[name]).parameters if p not in ("train", "n_seeds")]
