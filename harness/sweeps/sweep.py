"""Hyperparameter sweeps: "what is the best this design can do under a budget of N steps?"

A sweep spec is an ablation spec (``harness.spec.Spec``, without ``axes``) plus a ``search`` section:
the distributions to sample per dotted key, the objective metric(s), ``n_trials``, the sampler, the
pruner and a seed. Each Optuna trial samples a point, resolves it into a training configuration,
trains it with ``harness.train.train`` (evaluating every ``train.eval_every`` steps with the spec's
first evaluation setting, which the pruner watches) and returns that setting's metric at the final
evaluation. This is the only module that imports optuna.

Keys under ``eval.`` (``eval.guidance``, ``eval.steps``, ...) set a field of that evaluation setting,
not of the training configuration: they leave the config hash unchanged, so trials that differ only
in them share one trained model (``<store root>/checkpoints/<spec name>/<config hash>``) and only
sample anew.

Workers (local processes or a Slurm job array) all pull trials from one Optuna storage: by default a
journal file ``<store root>/optuna/<spec name>.log`` (processes on one machine), or any RDB URL
(``postgresql://...``) for workers on several machines, with heartbeats. Running a sweep again
continues its study until it holds ``n_trials`` COMPLETE or PRUNED trials.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import importlib.util
import inspect
import json
import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import (
    Config,
    ConfigError,
    SamplerSetting,
    TrainConfig,
    build_config,
    format_validation_error,
    merge,
    one_of,
    parse_overrides,
    read_yaml,
    set_dotted,
)
from ..orchestration.jobs import hold_lock, job_lock, load_ema, store_root
from ..orchestration.provenance import code_version, git_state
from ..orchestration.runner import Requeueable
from ..orchestration.spec import Axes, Spec, make_plan
from ..orchestration.tracking import MlflowStore, MlflowTracker
from ..orchestration.workers import die_with_parent
from ..private import SUBMITIT_READS, private_dir
from ..schema import CODE_VERSION, COMMIT, DIRTY, ERROR, HASH, PROFILE, QUESTION, ROLE, SPEC
from ..tracker import StoreUnavailable

STUDY, TRIAL, STATE, BEST = "harness.study", "harness.trial", "harness.trial_state", "harness.best_trial"
HEARTBEAT_SECONDS, GRACE_SECONDS = 60, 180  # RDB storage: a trial silent for 3 minutes is stale
MAX_RETRY = 2  # a trial whose worker died runs again at most this often (a third death: it stays FAIL)
MAX_FAILURES_IN_A_ROW = 3  # a worker whose trials keep raising stops: that is a bug, not a hyperparameter

# The metrics a trial can be scored on (keys of an evaluation result) and their natural direction.
METRICS = {
    "fid": "minimize",
    "kid": "minimize",
    "fid_inception": "minimize",
    "precision": "maximize",
    "recall": "maximize",
    "recognizability": "maximize",
    "class_accuracy": "maximize",
    "nfe": "minimize",
    "sample_seconds": "minimize",
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


def _median(train: TrainConfig, *, n_startup_trials: int = 5, n_warmup_steps: int = 0):
    return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)


def _hyperband(train: TrainConfig, *, min_resource: int | None = None, reduction_factor: int = 3):
    # A resource is a training step; the first rung is the first periodic evaluation.
    return optuna.pruners.HyperbandPruner(
        min_resource=min_resource or train.eval_every, max_resource=train.steps, reduction_factor=reduction_factor
    )


def _threshold(train: TrainConfig, *, lower: float | None = None, upper: float | None = None, n_warmup_steps: int = 0):
    return optuna.pruners.ThresholdPruner(lower=lower, upper=upper, n_warmup_steps=n_warmup_steps)


def _none(train: TrainConfig):
    return optuna.pruners.NopPruner()


PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": _median,
    "hyperband": _hyperband,
    "threshold": _threshold,
    "none": _none,
}


def _pruner_options(name: str) -> list[str]:
    return [p for p in inspect.signature(PRUNERS[name]).parameters if p != "train"]


# -- the search section ---------------------------------------------------------------------------------


class Objective(_Strict):
    metric: str
    direction: Literal["minimize", "maximize"] | None = None  # default: the metric's natural direction

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return one_of(v, METRICS, "metric")

    @property
    def resolved_direction(self) -> str:
        return self.direction or METRICS[self.metric]


class Search(_Strict):
    params: dict[str, dict[str, Any]] = Field(min_length=1)  # dotted key -> {type: float|int|categorical, ...}
    objective: list[Objective] = Field(min_length=1)  # one metric, or several for a multi-objective study
    n_trials: int = Field(ge=1)
    sampler: str = "tpe"
    pruner: str | dict[str, Any] = "median"  # a name, or {name: median, n_startup_trials: 5, ...}
    seed: int = 0

    @field_validator("objective", mode="before")
    @classmethod
    def _one_or_list(cls, v):
        return [v] if isinstance(v, dict) else v

    @field_validator("objective")
    @classmethod
    def _distinct(cls, v):
        metrics = [o.metric for o in v]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"each metric once; got {', '.join(metrics)}")
        return v

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        return one_of(v, SAMPLERS, "sampler")

    @field_validator("pruner")
    @classmethod
    def _pruner(cls, v):
        options = dict(v) if isinstance(v, dict) else {"name": v}
        name = options.pop("name", None)
        one_of(name, PRUNERS, "pruner")
        unknown = sorted(set(options) - set(_pruner_options(name)))
        if unknown:
            valid = ", ".join(_pruner_options(name)) or "none"
            raise ValueError(f"unknown option {unknown[0]!r} for pruner {name}; valid: {valid}")
        return v

    @property
    def pruner_name(self) -> str:
        return self.pruner["name"] if isinstance(self.pruner, dict) else self.pruner

    @property
    def pruner_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.pruner.items() if k != "name"} if isinstance(self.pruner, dict) else {}


class _SearchSection(_Strict):
    search: Search  # a wrapper, so errors read ``search.<field>`` and list the valid keys there


@dataclass(frozen=True)
class Sweep:
    """A validated sweep spec in one profile: what every trial starts from and how it is scored."""

    spec: Spec
    search: Search
    params: dict[str, FloatParam | IntParam | CategoricalParam]
    source: str
    profile: str | None
    base: dict[str, Any]  # the resolved training configuration before sampling (train.seed = seeds[0])
    setting: dict[str, Any]  # the evaluation setting trials are scored with (the spec's first)

    @property
    def study_name(self) -> str:
        return f"{self.spec.name}-{self.profile}" if self.profile else self.spec.name

    @property
    def multi_objective(self) -> bool:
        return len(self.search.objective) > 1

    @property
    def directions(self) -> list[str]:
        return [o.resolved_direction for o in self.search.objective]

    @property
    def pruning(self) -> bool:
        # Optuna's pruners compare one reported value; multi-objective studies do not prune.
        return not self.multi_objective and self.search.pruner_name != "none"

    def resolve(self, params: dict[str, Any], device: str | None = None, where: str | None = None) -> Config:
        """The training configuration of one trial: base, then the sampled values by dotted key."""
        cfg, setting = self.base, dict(self.setting)
        for key, value in params.items():
            if key.startswith("eval."):
                setting[key.removeprefix("eval.")] = value
            else:
                cfg = set_dotted(cfg, key, value)
        if device is not None:
            cfg = set_dotted(cfg, "train.device", device)  # operational: the config hash stays the same
        where = where or f"{self.source} ({', '.join(f'{k}={v}' for k, v in params.items())})"
        return build_config(merge(cfg, {"eval": {"samplers": [setting]}}), where)

    def fingerprint(self) -> str:
        """Identifies what a study's trials mean (base model and budget, scoring); a resumed study must match."""
        scoring = {
            "eval": {k: v for k, v in self.base["eval"].items() if k != "samplers"},
            "setting": self.setting,
            "objective": [(o.metric, o.resolved_direction) for o in self.search.objective],
        }
        text = build_config(self.base, self.source).train_hash() + json.dumps(scoring, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def sampler(self, worker: int, n_existing: int) -> optuna.samplers.BaseSampler:
        # Seeded per (seed, worker, trials so far): a resumed or parallel sampler never replays the
        # random start-up points an earlier one drew; a fresh single-worker sweep is reproducible.
        seed = int(hashlib.sha256(f"{self.search.seed}-{worker}-{n_existing}".encode()).hexdigest()[:8], 16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return SAMPLERS[self.search.sampler](seed, self.search.n_trials)

    def pruner(self) -> optuna.pruners.BasePruner:
        if not self.pruning:
            return optuna.pruners.NopPruner()
        train = build_config(self.base, self.source).train
        return PRUNERS[self.search.pruner_name](train, **self.search.pruner_options)


def load_sweep(path: str | Path, profile: str | None = None, overrides: dict[str, Any] | None = None) -> Sweep:
    """Parse and validate a sweep spec; every error is one ConfigError line naming the file and field.

    ``profiles.<name>.search`` (partial) is merged into ``search``; ``overrides`` keys under ``search.``
    set search fields (``search.n_trials``), the others set base configuration fields as in ``--set``.
    """
    source = str(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(
            f"{source}: a sweep spec is a mapping with name, question, base, search, ...; this file is {kind}"
        )
    data = copy.deepcopy(data)
    search = data.pop("search", None)
    if not isinstance(search, dict):
        raise ConfigError(
            f"{source}: search: a sweep spec needs a search section (params, objective, n_trials, "
            f"sampler, pruner, seed)"
        )
    profile_search = {}
    for name, prof in (data.get("profiles") or {}).items():
        if isinstance(prof, dict) and "search" in prof:
            profile_search[name] = prof.pop("search")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, root=Spec)) from None
    if spec.axes != Axes():
        raise ConfigError(f"{source}: axes: a sweep has no axes; search.params replaces them")
    if profile is not None and profile in profile_search:
        if not isinstance(profile_search[profile], dict):
            raise ConfigError(f"{source}: profiles.{profile}.search: expected a mapping of search fields")
        search = merge(search, profile_search[profile])
    config_overrides = {}
    for key, value in (overrides or {}).items():
        if key.startswith("search."):
            search = set_dotted(search, key.removeprefix("search."), value)
        else:
            config_overrides[key] = value
    try:
        checked = _SearchSection.model_validate({"search": search}).search
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, root=_SearchSection)) from None

    plan = make_plan(spec, source, profile, config_overrides)  # profile, set, seeds, evaluate: as ablations do
    for key in config_overrides:  # checked after the values are: a bad value is the first thing to fix
        if any(key == k or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in checked.params):
            # The sampler sets this key in every trial: a fixed value would be silently replaced.
            raise ConfigError(
                f"--set {key}: search.params samples this key in every trial, so this value would be "
                f"ignored; change or remove search.params.{key} instead"
            )
    job = plan.jobs[0]  # the first seed
    base = job.config.to_dict()
    setting = job.config.eval.samplers[0].model_dump()
    base["eval"]["samplers"] = [setting]
    params = {key: _param(source, key, value) for key, value in checked.params.items()}
    sweep = Sweep(spec=spec, search=checked, params=params, source=source, profile=profile, base=base, setting=setting)
    _check_space(sweep)
    return sweep


def _param(source: str, key: str, raw: dict[str, Any]):
    where = f"{source}: search.params.{key}"
    kind = raw.get("type")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where}.type: {'missing' if kind is None else f'unknown type {kind!r}'}; "
            f"valid: {', '.join(DISTRIBUTIONS)}"
        )
    cls = DISTRIBUTIONS[kind]
    try:
        param = cls.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            raise ConfigError(
                f"{where}.{loc}: unknown key; valid keys for type {kind}: {', '.join(cls.model_fields)}"
            ) from None
        raise ConfigError(f"{where}.{loc}: {e['msg'].removeprefix('Value error, ')}") from None
    try:
        param.distribution()
    except ValueError as err:  # Optuna's own checks: low <= high, log needs low > 0, log xor step, ...
        raise ConfigError(f"{where}: {' '.join(str(err).split())}") from None
    return param


def _check_space(sweep: Sweep) -> None:
    """Every sampled key names a real field, every bound is a valid value, the sampler fits the space."""
    src, search = sweep.source, sweep.search
    eval_keys = sorted(SamplerSetting.model_fields)
    for key, param in sweep.params.items():
        if key.startswith("eval.") and key.removeprefix("eval.") not in eval_keys:
            raise ConfigError(
                f"{src}: search.params.{key}: eval.* keys set a field of the evaluation setting; "
                f"valid: {', '.join('eval.' + k for k in eval_keys)}"
            )
        for value in param.probes():
            sweep.resolve({key: value}, where=f"{src}: search.params.{key}: the value {value!r} is invalid")
    for o in search.objective:
        if o.metric == "class_accuracy" and not sweep.base["model"]["conditional"]:
            raise ConfigError(f"{src}: search.objective: class_accuracy needs model.conditional: true")
    if sweep.multi_objective and search.sampler in SINGLE_OBJECTIVE_SAMPLERS:
        valid = ", ".join(sorted(set(SAMPLERS) - SINGLE_OBJECTIVE_SAMPLERS))
        raise ConfigError(f"{src}: search.sampler: {search.sampler} optimizes one objective; for several use {valid}")
    if search.sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise ConfigError(f"{src}: search.sampler: cmaes needs the package 'cmaes' (pip install cmaes)")
    if search.sampler == "bruteforce":
        size = 1
        for key, param in sweep.params.items():
            n = grid_size(param.distribution())
            if n is None:
                raise ConfigError(
                    f"{src}: search.params.{key}: bruteforce needs finite values: give the float "
                    f"a step, or use int or categorical"
                )
            size *= n
        if search.n_trials > size:
            raise ConfigError(
                f"{src}: search.n_trials: {search.n_trials} is more than the {size} points bruteforce can visit"
            )
    if sweep.pruning and sweep.base["train"]["eval_every"] == 0:
        raise ConfigError(
            f"{src}: search.pruner: {search.pruner_name} prunes on periodic evaluations; set "
            f"train.eval_every > 0, or pruner: none"
        )
    try:
        sweep.pruner()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{src}: search.pruner: {err}") from None


def validate_sweep(path: str | Path) -> list[Sweep]:
    """The sweep in its default form and in every profile (``harness validate``)."""
    first = load_sweep(path)
    return [first] + [load_sweep(path, p) for p in first.spec.profiles]


def is_sweep_spec(path: str | Path) -> bool:
    data = read_yaml(path)
    return isinstance(data, dict) and "search" in data


# -- storage --------------------------------------------------------------------------------------------


def journal_path(root: Path, spec_name: str) -> Path:
    return root / "optuna" / f"{spec_name}.log"


def open_storage(
    storage: str | None,
    root: Path,
    spec_name: str,
    *,
    heartbeat_interval: int = HEARTBEAT_SECONDS,
    grace_period: int = GRACE_SECONDS,
) -> optuna.storages.BaseStorage:
    """A journal file (default, or a path) for processes on one machine; an RDB URL for several machines.

    RDB storages record a heartbeat per running trial; a trial silent for ``grace_period`` seconds is
    failed and its parameters enqueued again (``RetryHeartbeatStaleTrialCallback``). Journal files
    have no heartbeat: ``retry_dead_trials`` finds dead workers by their per-trial file lock instead.
    """
    if storage is None or "://" not in storage:
        path = Path(storage) if storage else journal_path(root, spec_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Appends are serialized by an O_CREAT|O_EXCL lock file beside the log (safe for processes on
        # one machine and on NFSv3+); a holder that died is overridden after its 30 s grace period.
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            storage,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )


def storage_label(storage: str | None, root: Path, spec_name: str) -> str:
    """Where the study lives, without any password in a URL."""
    if storage is None or "://" not in storage:
        return str(Path(storage) if storage else journal_path(root, spec_name))
    scheme, rest = storage.split("://", 1)
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}" if "@" in rest else storage


def create_study(sweep: Sweep, storage) -> optuna.Study:
    """Create the study, or check that an existing one was made for the same base, budget and scoring."""
    study = optuna.create_study(
        storage=storage, study_name=sweep.study_name, directions=sweep.directions, load_if_exists=True
    )
    have = [d.name.lower() for d in study.directions]
    if have != sweep.directions:
        raise ConfigError(
            f"{sweep.source}: search.objective: study {sweep.study_name!r} optimizes {have}, not "
            f"{sweep.directions}; use another profile or remove the study from its storage"
        )
    mark = study.user_attrs.get("harness.fingerprint")
    if mark is None:
        study.set_user_attr("harness.fingerprint", sweep.fingerprint())
        study.set_user_attr("harness.objective", [o.metric for o in sweep.search.objective])
    elif mark != sweep.fingerprint():
        raise ConfigError(
            f"{sweep.source}: study {sweep.study_name!r} was started with another base configuration "
            f"or scoring (fingerprint {mark} != {sweep.fingerprint()}); its trials would not compare. "
            f"Use another profile or remove the study from its storage"
        )
    return study


def counts(study: optuna.Study) -> dict[str, int]:
    out = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return out


# -- one trial ------------------------------------------------------------------------------------------


class PruningEvaluator:
    """Wraps ``harness.evaluate.Evaluator``: reports the objective metric of each periodic evaluation to
    the trial and raises ``optuna.TrialPruned`` when the pruner says stop (``train`` propagates it)."""

    def __init__(self, inner, trial: optuna.Trial, metric: str | None, final_step: int):
        self.inner, self.trial, self.metric, self.final_step = inner, trial, metric, final_step
        self.final: dict[str, Any] | None = None  # the final evaluation, once it ran

    @property
    def classifier_accuracy(self) -> float:
        return self.inner.classifier_accuracy

    def run(self, model, *, step: int, tracker=None, final: bool | None = None) -> list[dict[str, Any]]:
        results = self.inner.run(model, step=step, tracker=tracker, final=final)
        result = results[0]  # a trial's config has one evaluation setting
        if step >= self.final_step:
            self.final = result
        if self.metric is not None and self.metric in result:
            self.trial.report(float(result[self.metric]), step)
            if step < self.final_step and self.trial.should_prune():
                raise optuna.TrialPruned(f"{self.metric} {result[self.metric]:.4g} at step {step}")
        return results


def trial_lock_name(study_name: str, number: int) -> str:
    return f"trial-{study_name}-{number}"


def _held(path: Path) -> bool:
    """Whether a live process holds the lock file (the OS drops a dead process's locks)."""
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def retry_dead_trials(study: optuna.Study, root: Path) -> list[int]:
    """Journal storage: fail RUNNING trials whose worker died, and enqueue their parameters again.

    Call with the study's claim lock held: a worker takes its trial lock before it lets go of the
    claim, so a RUNNING trial with a free lock has no live worker.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    dead = []
    for t in study.get_trials(deepcopy=True, states=(TrialState.RUNNING,)):
        if _held(root / "locks" / f"{trial_lock_name(study.study_name, t.number)}.lock"):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # it finished after all
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry(study, t)  # a WAITING copy with the same parameters (and the retry history)
        dead.append(t.number)
    return dead


@dataclass
class WorkerTask:
    """Everything a worker process needs (picklable)."""

    spec_path: str
    profile: str | None
    overrides: dict[str, Any]
    storage: str | None
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    worker: int = 0
    threads: int = 0  # torch threads; 0 leaves the process's setting alone
    device: str | None = None  # e.g. cuda:1; None: the configuration's train.device


@dataclass
class WorkerReport:
    worker: int
    trials: list[int] = field(default_factory=list)  # numbers of the trials this worker ran
    error: str | None = None
    name: str = ""  # host:pid, as in the trials' harness.worker tag


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TrialObjective:
    """The Optuna objective: sample, resolve, train (with pruning), score; one MLflow child run per trial."""

    def __init__(self, sweep: Sweep, task: WorkerTask, store: MlflowStore, root: Path):
        self.sweep, self.task, self.store, self.root = sweep, task, store, root
        self.claim = None  # the study's claim lock, held from the count through study.ask()
        self.trial_lock = None  # held while this process runs the trial, released after Optuna's tell
        self.trial_lock_path: Path | None = None
        self.last_error: str | None = None
        self.ran: list[int] = []  # trial numbers this process ran
        self._data: dict[tuple, Any] = {}

    def release(self, *_) -> None:
        """Let go of both locks (also an Optuna callback: it runs after the trial's state is told)."""
        if self.claim is not None:
            self.claim.close()
            self.claim = None
        if self.trial_lock is not None:
            self.trial_lock_path.unlink(missing_ok=True)
            self.trial_lock.close()
            self.trial_lock = None

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        name = trial_lock_name(self.sweep.study_name, trial.number)
        self.trial_lock, self.trial_lock_path = hold_lock(self.root, name), self.root / "locks" / f"{name}.lock"
        self.claim.close()  # only now: until here a dead-worker check could mistake this trial for orphaned
        self.claim = None
        self.ran.append(trial.number)
        self.last_error = None
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as err:
            self.last_error = f"{type(err).__name__}: {err}"
            raise

    def _run(self, trial: optuna.Trial) -> float | list[float]:
        from ..training.train import NonFiniteLoss

        sweep = self.sweep
        params = {key: self._suggest(trial, key, p) for key, p in sweep.params.items()}
        config = sweep.resolve(params, device=self.task.device)
        h = config.train_hash()
        trial.set_user_attr("config_hash", h)
        commit, _ = git_state()
        retried = trial.study.get_trials(deepcopy=False)[trial.number].system_attrs.get("failed_trial")
        run = self.store.start_run(
            self.task.experiment_id,
            f"{sweep.study_name}-trial-{trial.number}",
            parent=self.task.parent_run_id,
            tags={
                ROLE: "trial",
                HASH: h,
                SPEC: sweep.spec.name,
                COMMIT: commit,
                CODE_VERSION: code_version(),
                STUDY: sweep.study_name,
                TRIAL: trial.number,
                STATE: "RUNNING",
                "harness.worker": worker_name(),
                "harness.retry_of": "-" if retried is None else retried,
            },
        )
        trial.set_user_attr("mlflow_run_id", run.run_id)
        run.log_params({**params, "trial": trial.number})
        run.log_dict(config.to_dict(), "config.json")
        try:
            values = self._train_and_score(trial, config, run)
        except optuna.TrialPruned as err:
            self._end(run, "PRUNED", str(err))
            raise
        except NonFiniteLoss as err:
            # Diverged: recorded as pruned (stopped early, no value), so TPE ranks the point last
            # instead of ignoring it as it ignores FAIL trials.
            self._end(run, "PRUNED", str(err))
            raise optuna.TrialPruned(str(err)) from None
        except Exception as err:
            self._end(run, "FAIL", f"{type(err).__name__}: {err}")
            raise
        run.log_metrics({o.metric: v for o, v in zip(sweep.search.objective, values)}, step=config.train.steps)
        self._end(run, "COMPLETE")
        return values if sweep.multi_objective else values[0]

    @staticmethod
    def _suggest(trial: optuna.Trial, key: str, p) -> Any:
        if isinstance(p, FloatParam):
            return trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        if isinstance(p, IntParam):
            return trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)
        return trial.suggest_categorical(key, p.choices)

    def _end(self, run: MlflowTracker, state: str, reason: str | None = None) -> None:
        tags = {STATE: state}
        if reason:
            tags[ERROR if state == "FAIL" else "harness.stopped"] = reason[:5000]
        run.set_tags(tags)
        run.finish("FAILED" if state == "FAIL" else "FINISHED")

    def _dataset(self, config: Config):
        from ..training.data import load_dataset

        key = (config.data.dataset, config.data.root, config.data.download)
        if key not in self._data:
            self._data[key] = load_dataset(*key)
        return self._data[key]

    def _train_and_score(self, trial: optuna.Trial, config: Config, run: MlflowTracker) -> list[float]:
        from ..device import resolve_device
        from ..evaluation.evaluate import Evaluator
        from ..training.train import train

        data = self._dataset(config)
        h = config.train_hash()
        run_dir = self.root / "checkpoints" / self.sweep.spec.name / h  # per experiment, as the runner's
        device = resolve_device(config.train.device)
        evaluator = Evaluator(config, data, device=device, out_dir=run_dir)
        metric = self.sweep.search.objective[0].metric if self.sweep.pruning else None
        scorer = PruningEvaluator(evaluator, trial, metric, config.train.steps)
        with job_lock(self.root, h):  # one trainer per config hash; a twin trial waits, then reuses the model
            train(config, run, run_dir=run_dir, data=data, evaluator=scorer, progress=False)
            if scorer.final is None:  # trained to the end by an earlier trial: only this evaluation runs
                scorer.final = evaluator.run(
                    load_ema(config, data, run_dir, device), step=config.train.steps, tracker=run, final=True
                )[0]
        values = []
        for o in self.sweep.search.objective:
            if o.metric not in scorer.final:
                reason = scorer.final.get(f"{o.metric}_unavailable", "not in the evaluation result")
                raise RuntimeError(f"objective metric {o.metric} is missing: {reason}")
            values.append(float(scorer.final[o.metric]))
        return values


def recover_dead_trials(study: optuna.Study, storage, root: Path) -> None:
    """Fail (and enqueue again) trials whose worker died: by heartbeat (RDB) or by trial lock (journal)."""
    if isinstance(storage, JournalStorage):
        retry_dead_trials(study, root)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def run_worker(task: WorkerTask) -> WorkerReport:
    """Pull trials from the shared study until it holds ``n_trials`` finished (or running) ones."""
    if task.threads:
        import torch

        torch.set_num_threads(task.threads)
    sweep = load_sweep(task.spec_path, task.profile, task.overrides)
    store = MlflowStore(task.tracking_uri)
    root = store_root(store.uri)
    storage = open_storage(task.storage, root, sweep.spec.name)
    n_existing = len(optuna.load_study(study_name=sweep.study_name, storage=storage).get_trials(deepcopy=False))
    study = optuna.load_study(
        study_name=sweep.study_name,
        storage=storage,
        sampler=sweep.sampler(task.worker, n_existing),
        pruner=sweep.pruner(),
    )
    objective = TrialObjective(sweep, task, store, root)
    report, failures = WorkerReport(task.worker, name=worker_name()), 0
    while True:
        # The claim serializes, among this machine's workers, the dead-trial check, the count and the
        # ask, so the study never holds more than n_trials finished or running trials.
        objective.claim = hold_lock(root, f"sweep-{sweep.study_name}")
        ran_before = len(objective.ran)
        try:
            recover_dead_trials(study, storage, root)
            c = counts(study)
            if c["COMPLETE"] + c["PRUNED"] + c["RUNNING"] >= sweep.search.n_trials:
                break
            study.optimize(
                objective, n_trials=1, catch=(Exception,), callbacks=[objective.release], gc_after_trial=True
            )
        finally:
            objective.release()
        if len(objective.ran) == ran_before:  # Optuna stopped before the objective (a sampler's study.stop())
            report.error = "the sampler stopped the study"
            break
        trial = study.get_trials(deepcopy=False)[objective.ran[-1]]
        print(
            _trial_line(sweep, trial) + (f"  ({objective.last_error})" if trial.state == TrialState.FAIL else ""),
            flush=True,
        )
        failures = failures + 1 if trial.state == TrialState.FAIL else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            report.error = f"{failures} trials in a row failed; the last: {objective.last_error}"
            break
    report.trials = list(objective.ran)
    return report


def _trial_line(sweep: Sweep, t: FrozenTrial) -> str:
    values = "  ".join(f"{o.metric}={v:.4g}" for o, v in zip(sweep.search.objective, t.values or []))
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
    return f"[{sweep.study_name}] trial {t.number:>3} {t.state.name:>8}  {values}  {params}"


def _process_worker(task: WorkerTask) -> WorkerReport:
    """A worker in a process of its own: Optuna's per-trial log lines would repeat ours."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return run_worker(task)


def _spawned_worker(task: WorkerTask, out: str, parent: int) -> None:
    die_with_parent(parent)  # a sweep launcher killed by SIGKILL leaves no worker training on
    try:
        report = _process_worker(task)
    except Exception as err:  # noqa: BLE001 - reported by the parent, the other workers go on
        report = WorkerReport(task.worker, error=f"{type(err).__name__}: {err}")
    Path(out).write_text(json.dumps(report.__dict__))


def _run_local(tasks: list[WorkerTask]) -> list[WorkerReport]:
    if len(tasks) == 1:
        return [run_worker(tasks[0])]
    import multiprocessing as mp

    # Plain processes, not a pool: a pool that loses one worker (OOM, kill) ends all the others.
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        outs = [str(Path(tmp) / f"worker-{t.worker}.json") for t in tasks]
        procs = [ctx.Process(target=_spawned_worker, args=(t, o, os.getpid())) for t, o in zip(tasks, outs)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return [
            WorkerReport(**json.loads(Path(o).read_text()))
            if Path(o).exists()
            else WorkerReport(
                t.worker, error=f"worker died (exit code {p.exitcode}); its trial is retried by the next run"
            )
            for t, o, p in zip(tasks, outs, procs)
        ]


def _run_slurm(
    tasks: list[WorkerTask], params: dict[str, Any], folder: Path, cluster: str | None
) -> list[WorkerReport]:
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**params)
    with executor.batch():  # one job array
        jobs = [executor.submit(Requeueable(_process_worker, t)) for t in tasks]
    reports = []
    for task, job in zip(tasks, jobs):
        try:
            reports.append(job.result())
        except Exception as err:  # noqa: BLE001
            reports.append(WorkerReport(task.worker, error=str(err).splitlines()[-1][:500]))
    return reports


# -- the whole sweep ------------------------------------------------------------------------------------


@dataclass
class TrialRecord:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    values: list[float] | None
    params: dict[str, Any]
    config_hash: str | None
    run_id: str | None  # the trial's MLflow child run


@dataclass
class SweepResult:
    study_name: str
    storage: str  # the journal file or the RDB URL (without password)
    parent_run_id: str
    n_trials: int  # the target: COMPLETE + PRUNED trials
    objective: list[tuple[str, str]]  # (metric, direction)
    trials: list[TrialRecord]
    best: list[TrialRecord]  # the best trial; for several objectives the Pareto front
    workers: list[WorkerReport] = field(default_factory=list)  # which trials each worker ran

    @property
    def worker_errors(self) -> list[str]:
        return [w.error for w in self.workers if w.error]

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    @property
    def finished(self) -> int:
        return sum(t.state in ("COMPLETE", "PRUNED") for t in self.trials)

    @property
    def ok(self) -> bool:
        return self.finished >= self.n_trials and not self.worker_errors


def _record(t: FrozenTrial, runs: dict[int, str]) -> TrialRecord:
    return TrialRecord(
        t.number,
        t.state.name,
        list(t.values) if t.values else None,
        dict(t.params),
        t.user_attrs.get("config_hash"),
        runs.get(t.number),
    )


def open_parent(
    store: MlflowStore, experiment_id: str, sweep: Sweep, root: Path, spec_path: str, where: str
) -> MlflowTracker:
    """The study's one parent run: created by its first invocation, resumed by later ones."""
    lock = hold_lock(root, f"sweep-parent-{sweep.study_name}")
    try:
        runs = store.runs(experiment_id, {ROLE: "sweep", STUDY: sweep.study_name})
        commit, dirty = git_state()
        if runs:
            parent = store.resume_run(runs[0].info.run_id)
        else:
            parent = store.start_run(
                experiment_id,
                sweep.study_name,
                tags={
                    ROLE: "sweep",
                    HASH: "-",
                    SPEC: sweep.spec.name,
                    STUDY: sweep.study_name,
                    COMMIT: commit,
                    DIRTY: dirty,
                    PROFILE: sweep.profile or "default",
                    QUESTION: sweep.spec.question,
                },
            )
            parent.log_params(
                {
                    "objective": ", ".join(
                        f"{m}:{d}" for m, d in zip([o.metric for o in sweep.search.objective], sweep.directions)
                    ),
                    "search_space": ", ".join(sweep.params),
                    "setting": SamplerSetting(**sweep.setting).label,
                }
            )
            parent.log_dict(sweep.base, "base_config.json")
        parent.set_tags(
            {
                "harness.storage": where,
                "harness.n_trials": sweep.search.n_trials,
                COMMIT: commit,
                "harness.sampler": sweep.search.sampler,
                "harness.pruner": sweep.search.pruner_name if sweep.pruning else "none",
            }
        )
        parent.log_artifact(spec_path)
        parent.log_dict(sweep.search.model_dump(mode="json"), "search.json")
        return parent
    finally:
        lock.close()


def _child_runs(store: MlflowStore, experiment_id: str, study_name: str) -> dict[int, Any]:
    """The newest MLflow run of each trial number."""
    out: dict[int, Any] = {}
    for run in store.runs(experiment_id, {ROLE: "trial", STUDY: study_name}):  # newest first
        out.setdefault(int(run.data.tags[TRIAL]), run)
    return out


def finish_study(
    store: MlflowStore, experiment_id: str, study: optuna.Study, sweep: Sweep, parent: MlflowTracker
) -> tuple[dict[int, str], list[int]]:
    """Close child runs whose worker died, tag the best trial(s), log the figures and the trial table."""
    children = _child_runs(store, experiment_id, sweep.study_name)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number, run in children.items():
        t = trials.get(number)
        if run.info.status == "RUNNING" and t is not None and t.state.is_finished():
            child = MlflowTracker(store.client, run.info.run_id)
            child.set_tags({STATE: t.state.name, ERROR: "its worker died"})
            child.finish("FAILED" if t.state == TrialState.FAIL else "FINISHED")
    best: list[int] = []
    if any(t.state == TrialState.COMPLETE for t in trials.values()):
        best = [t.number for t in study.best_trials] if sweep.multi_objective else [study.best_trial.number]
    for number, run in children.items():
        is_best = number in best
        if is_best or run.data.tags.get(BEST) == "true":
            MlflowTracker(store.client, run.info.run_id).set_tags({BEST: str(is_best).lower()})
    c = counts(study)
    parent.log_metrics({f"trials_{s.lower()}": n for s, n in c.items() if s in ("COMPLETE", "PRUNED", "FAIL")})
    if best and not sweep.multi_objective:
        t = trials[best[0]]
        parent.log_metrics({f"best_{sweep.search.objective[0].metric}": t.value})
        parent.set_tags(
            {
                "harness.best_trial_number": t.number,
                "harness.best_run_id": children[t.number].info.run_id if t.number in children else "-",
            }
        )
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "trials.csv"
        study.trials_dataframe().to_csv(table, index=False)
        parent.log_artifact(str(table))
        for path, problem in log_figures(study, sweep, Path(tmp)):
            if path is not None:
                parent.log_artifact(str(path))
            else:
                parent.set_tags({f"harness.figure_unavailable.{problem[0]}": problem[1][:500]})
    return {n: r.info.run_id for n, r in children.items()}, best


def log_figures(study: optuna.Study, sweep: Sweep, out: Path) -> list[tuple[Path | None, tuple[str, str] | None]]:
    """Optimization history and parameter importances per objective (and the Pareto front) as PNGs."""
    import matplotlib
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plots: list[tuple[str, Callable]] = []
    for i, o in enumerate(sweep.search.objective):
        suffix = f"_{o.metric}" if sweep.multi_objective else ""
        target = (lambda t, i=i: t.values[i]) if sweep.multi_objective else None
        plots.append(
            (
                f"optimization_history{suffix}",
                lambda target=target, o=o: ovm.plot_optimization_history(study, target=target, target_name=o.metric),
            )
        )
        plots.append(
            (
                f"param_importances{suffix}",
                lambda target=target, o=o: ovm.plot_param_importances(study, target=target, target_name=o.metric),
            )
        )
    if len(sweep.search.objective) in (2, 3):
        plots.append(
            (
                "pareto_front",
                lambda: ovm.plot_pareto_front(study, target_names=[o.metric for o in sweep.search.objective]),
            )
        )
    results = []
    with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna's plots switch the global style
        warnings.simplefilter("ignore")
        for name, plot in plots:
            try:
                ax = plot()
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                path = out / f"{name}.png"
                fig.savefig(path, dpi=100, bbox_inches="tight")
                plt.close(fig)
                results.append((path, None))
            except Exception as err:  # too few finished trials, a constant objective, ...
                results.append((None, (name, f"{type(err).__name__}: {err}")))
    return results


def preflight(sweep: Sweep) -> None:
    """Load the data set and build its domain classifier once, before the workers (not once per worker)."""
    from ..evaluation.evaluate import default_cache_dir
    from ..evaluation.features import domain_classifier
    from ..training.data import load_dataset

    data = sweep.base["data"]
    images = load_dataset(data["dataset"], data["root"], data["download"])
    for reject in (False, True):  # the FID classifier and the recognizer
        domain_classifier(images, default_cache_dir() / "classifiers", reject=reject)


def run_sweep(
    spec_path: str | Path,
    *,
    profile: str | None = None,
    workers: int = 1,
    storage: str | None = None,
    executor: str = "local",
    tracking_uri: str | None = None,
    overrides: dict[str, Any] | None = None,
    cluster: str | None = None,
) -> SweepResult:
    """Run (or continue) the sweep until its study holds ``n_trials`` COMPLETE or PRUNED trials.

    ``workers`` processes pull trials from one storage (``storage``: journal file path or RDB URL;
    default ``<store root>/optuna/<spec name>.log``); ``executor='slurm'`` runs them as a submitit job
    array (``cluster='debug'`` runs them in this process, for tests).
    """
    if executor not in ("local", "slurm"):
        raise ConfigError(f"--executor {executor!r}: valid: local, slurm")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: at least 1")
    spec_path = str(spec_path)
    overrides = dict(overrides or {})
    sweep = load_sweep(spec_path, profile, overrides)
    preflight(sweep)  # before anything is tracked: a missing data set fails here, in one line
    store = MlflowStore(tracking_uri)
    store.check()
    root = store_root(store.uri)
    where = storage_label(storage, root, sweep.spec.name)
    try:
        optuna_storage = open_storage(storage, root, sweep.spec.name)
    except Exception as err:  # noqa: BLE001 - sqlalchemy and OS errors alike
        raise StoreUnavailable(
            f"optuna storage {where} is not usable: {str(err).strip().splitlines()[-1][:300]}"
        ) from None
    study = create_study(sweep, optuna_storage)
    experiment_id = store.experiment_id(sweep.spec.name)
    parent = open_parent(store, experiment_id, sweep, root, spec_path, where)

    devices: list[str | None] = [None] * workers
    threads = 0
    if executor == "local" and workers > 1:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = [f"cuda:{i % gpus}" for i in range(workers)] if gpus else devices
        threads = max(1, (os.cpu_count() or 1) // workers)  # the CPU's cores divided between the workers
    tasks = [
        WorkerTask(
            spec_path,
            profile,
            overrides,
            storage,
            store.uri,
            experiment_id,
            parent.run_id,
            worker=i,
            threads=threads,
            device=devices[i],
        )
        for i in range(workers)
    ]
    print(
        f"{sweep.study_name}: {sweep.search.n_trials} trials ({sweep.search.sampler}, pruner "
        f"{sweep.search.pruner_name if sweep.pruning else 'none'}), {workers} worker(s); study in {where}; "
        f"{counts(study)['COMPLETE'] + counts(study)['PRUNED']} finished so far",
        flush=True,
    )
    try:
        if executor == "slurm":
            reports = _run_slurm(
                tasks, sweep.spec.slurm, private_dir(root / "slurm" / sweep.study_name, SUBMITIT_READS), cluster
            )
        else:
            reports = _run_local(tasks)
    except BaseException:
        parent.finish("KILLED")
        raise
    study = optuna.load_study(study_name=sweep.study_name, storage=optuna_storage)
    runs, best = finish_study(store, experiment_id, study, sweep, parent)
    trials = [_record(t, runs) for t in study.get_trials(deepcopy=False)]
    result = SweepResult(
        sweep.study_name,
        where,
        parent.run_id,
        sweep.search.n_trials,
        [(o.metric, d) for o, d in zip(sweep.search.objective, sweep.directions)],
        trials,
        [trials[n] for n in best],
        reports,
    )
    parent.finish("FINISHED" if result.ok else "FAILED")
    return result


def add_arguments(parser) -> None:
    """The ``harness sweep`` arguments, for the CLI to wire."""
    parser.add_argument("spec", help="a sweep spec: an ablation spec with a search section")
    parser.add_argument("--profile", help="a profile of the spec (smoke, quick, full, ...)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes sharing the study")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: an RDB URL (postgresql://...) for "
        "workers on several machines, or a journal file path (default: <store>/optuna/<spec>.log)",
    )
    parser.add_argument("--executor", choices=["local", "slurm"], default="local")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/mlflow.db)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base field (train.steps=200) or a search field (search.n_trials=40)",
    )


def sweep_main(args) -> int:
    """``harness sweep``: 0 when the study holds n_trials finished trials, 1 otherwise, 2 for bad input."""
    from ..training.data import DataUnavailable

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the command prints its own line per trial
    try:
        overrides = parse_overrides(getattr(args, "set", None) or [])  # a key given twice is an error
        result = run_sweep(
            args.spec,
            profile=args.profile,
            workers=getattr(args, "workers", None) or 1,
            storage=getattr(args, "storage", None),
            executor=getattr(args, "executor", None) or "local",
            tracking_uri=getattr(args, "tracking_uri", None),
            overrides=overrides,
        )
    except (ConfigError, DataUnavailable, StoreUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    c = result.counts
    print(
        f"{result.study_name}: {result.finished}/{result.n_trials} finished ("
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(c.items()))
        + f"); parent run {result.parent_run_id}"
    )
    for t in result.best:
        values = "  ".join(f"{m}={v:.4g}" for (m, _), v in zip(result.objective, t.values or []))
        print(f"  best trial {t.number}: {values}  {t.params}  (config {t.config_hash}, run {t.run_id})")
    for err in result.worker_errors:
        print(f"  worker error: {err}", file=sys.stderr)
    return 0 if result.ok else 1
