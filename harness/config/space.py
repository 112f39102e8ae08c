"""The search space: parameter distributions by ``type``, the objective metrics, Optuna's samplers and
pruners as plain dicts that specs name by key."""

from __future__ import annotations

import inspect
from typing import Any, Literal

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .run import TrainConfig
from .schema import METRICS as SCHEMA_METRICS

# What a trial can be scored on: every evaluation metric but the bookkeeping ones, in its natural direction
# (lower is better for FID and KID, and for the costs NFE and sampling seconds).
NOT_OBJECTIVES = ("kid_std", "fid_se", "fid_floor", "num_generated", "num_reference")  # about the metric, not the model
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


# -- samplers and pruners: Optuna's own classes by the names specs use ----------------------------------
# A spec names one (``sampler: tpe``) or gives its keyword options too (``{name: tpe, n_startup_trials: 4}``);
# the options are the class's own keywords, over the harness defaults below. ``seed`` is the harness's:
# each worker's sampler is seeded from ``search.seed`` (``Sweep.sampler``).

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "random": optuna.samplers.RandomSampler,
    "bruteforce": optuna.samplers.BruteForceSampler,
}
SINGLE_OBJECTIVE_SAMPLERS = {"cmaes"}  # CMA-ES optimizes one value
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "none": optuna.pruners.NopPruner,
}
HARNESS_KEYWORDS = ("seed",)  # set by the harness, not by a spec


def options(cls: type) -> list[str]:
    """The keyword options a spec may give a sampler or pruner class."""
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *HARNESS_KEYWORDS)]


def sampler_defaults(name: str, n_trials: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "n_startup_trials" in options(SAMPLERS[name]):
        # Optuna's default is 10 random trials before modelling; a 12-trial sweep would be mostly random.
        out["n_startup_trials"] = max(2, min(10, n_trials // 3))
    if name == "tpe":
        # constant_liar: running trials count as bad guesses, so parallel workers spread out.
        out |= {"multivariate": True, "constant_liar": True}
    return out


def pruner_defaults(name: str, train: TrainConfig, n_seeds: int) -> dict[str, Any]:
    if name == "hyperband":
        # A resource is a training step of the seeds' sequence (``Sweep.prune_step``); the first rung is the
        # first periodic evaluation.
        return {"min_resource": train.eval_every, "max_resource": train.steps * n_seeds}
    return {}


def make_sampler(name: str, given: dict[str, Any], seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    return SAMPLERS[name](seed=seed, **(sampler_defaults(name, n_trials) | given))


def make_pruner(name: str, given: dict[str, Any], train: TrainConfig, n_seeds: int) -> optuna.pruners.BasePruner:
    return PRUNERS[name](**(pruner_defaults(name, train, n_seeds) | given))
