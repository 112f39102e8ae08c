"""A sweep spec: an ablation spec without ``axes`` plus a ``search`` section, validated in one pass; every
error is one line naming the file and field."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import Field, ValidationError, field_validator

from ..config import (
    Config,
    ConfigError,
    SamplerSetting,
    build_config,
    format_validation_error,
    merge,
    one_of,
    read_yaml,
    set_dotted,
)
from ..config.space import (
    DISTRIBUTIONS,
    METRICS,
    PRUNERS,
    SAMPLERS,
    SINGLE_OBJECTIVE_SAMPLERS,
    CategoricalParam,
    FloatParam,
    IntParam,
    _Strict,
    grid_size,
    make_pruner,
    make_sampler,
    options,
)
from ..config.spec import Axes, Spec, make_plan, validate_spec

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


class Confirm(_Strict):
    """Re-train the ``top`` best trials with fresh ``seeds`` after the search: the best of N noisy trials is
    biased upward (the winner's curse), so its search value is not its expected value; these are."""

    top: int = Field(ge=1)
    seeds: list[int] = Field(min_length=1)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"each seed once; got {v}")
        return v


class Search(_Strict):
    params: dict[str, dict[str, Any]] = Field(min_length=1)  # dotted key -> {type: float|int|categorical, ...}
    objective: list[Objective] = Field(min_length=1)  # one metric, or several for a multi-objective study
    n_trials: int = Field(ge=1)
    sampler: str | dict[str, Any] = "tpe"  # a name, or {name: tpe, n_startup_trials: 4, ...}
    pruner: str | dict[str, Any] = "median"  # a name, or {name: median, n_startup_trials: 5, ...}
    seed: int = 0
    aggregate: Literal["mean", "median"] = "mean"  # a trial's value over the spec's seeds
    confirm: Confirm | None = None

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
    def _sampler(cls, v):
        return _named(v, SAMPLERS, "sampler")

    @field_validator("pruner")
    @classmethod
    def _pruner(cls, v):
        return _named(v, PRUNERS, "pruner")

    @property
    def sampler_name(self) -> str:
        return _name(self.sampler)

    @property
    def sampler_options(self) -> dict[str, Any]:
        return _options(self.sampler)

    @property
    def pruner_name(self) -> str:
        return _name(self.pruner)

    @property
    def pruner_options(self) -> dict[str, Any]:
        return _options(self.pruner)


def _named(v, classes: dict[str, type], what: str):
    """A name, or {name: ..., option: value, ...} whose options are keywords of the named Optuna class."""
    given = dict(v) if isinstance(v, dict) else {"name": v}
    name = given.pop("name", None)
    one_of(name, classes, what)
    unknown = sorted(set(given) - set(options(classes[name])))
    if unknown:
        valid = ", ".join(options(classes[name])) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} for {what} {name}; valid: {valid}")
    return v


def _name(v) -> str:
    return v["name"] if isinstance(v, dict) else v


def _options(v) -> dict[str, Any]:
    return {k: x for k, x in v.items() if k != "name"} if isinstance(v, dict) else {}


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
    seeds: tuple[int, ...]  # every trial trains one model per seed; its value aggregates them

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

    @property
    def final_steps(self) -> int:
        """The pruner's last step: a trial's seeds train one after the other (see ``prune_step``)."""
        return self.base["train"]["steps"] * len(self.seeds)

    def prune_step(self, seed_index: int, step: int) -> int:
        """The step a trial reports its running aggregate at: seed i's step k is i * steps + k, the same
        in every trial (seeds train in one order), so the pruner compares trials on the same seeds."""
        return seed_index * self.base["train"]["steps"] + step

    def resolve(
        self, params: dict[str, Any], device: str | None = None, where: str | None = None, seed: int | None = None
    ) -> Config:
        """The training configuration of one trial and seed: base, then the sampled values by dotted key."""
        cfg, setting = self.base, dict(self.setting)
        if seed is not None:
            cfg = set_dotted(cfg, "train.seed", seed)
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
            "seeds": list(self.seeds),  # a mean over other seeds is another value
            "aggregate": self.search.aggregate,
        }
        text = build_config(self.base, self.source).train_hash() + json.dumps(scoring, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def sampler(self, worker: int, n_existing: int) -> optuna.samplers.BaseSampler:
        # Seeded per (seed, worker, trials so far): a resumed or parallel sampler never replays the
        # random start-up points an earlier one drew; a fresh single-worker sweep is reproducible.
        seed = int(hashlib.sha256(f"{self.search.seed}-{worker}-{n_existing}".encode()).hexdigest()[:8], 16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return make_sampler(self.search.sampler_name, self.search.sampler_options, seed, self.search.n_trials)

    def pruner(self) -> optuna.pruners.BasePruner:
        if not self.pruning:
            return optuna.pruners.NopPruner()
        train = build_config(self.base, self.source).train
        return make_pruner(self.search.pruner_name, self.search.pruner_options, train, len(self.seeds))


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
    entries = data.get("literature")
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict) and entry.get("expect") is not None:  # it would select arms; a sweep has none
            raise ConfigError(
                f"{source}: literature.{i}.expect: a sweep has no arms to test a claim on; drop expect and say "
                "why in unchecked (the report shows the entry as context)"
            )
    spec = validate_spec(data, source)  # as an ablation's, with the shared profiles
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
    seeds = tuple(j.seed for j in plan.jobs)
    sweep = Sweep(
        spec=spec,
        search=checked,
        params=params,
        source=source,
        profile=profile,
        base=base,
        setting=setting,
        seeds=seeds,
    )
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
    if sweep.multi_objective and search.sampler_name in SINGLE_OBJECTIVE_SAMPLERS:
        valid = ", ".join(sorted(set(SAMPLERS) - SINGLE_OBJECTIVE_SAMPLERS))
        raise ConfigError(
            f"{src}: search.sampler: {search.sampler_name} optimizes one objective; for several use {valid}"
        )
    if search.sampler_name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise ConfigError(f"{src}: search.sampler: cmaes needs the package 'cmaes' (pip install cmaes)")
    if search.sampler_name == "bruteforce":
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
    if search.confirm is not None:
        if sweep.multi_objective:
            raise ConfigError(
                f"{src}: search.confirm: confirmation ranks trials on one objective; this study has several"
            )
        reused = sorted(set(search.confirm.seeds) & set(sweep.seeds))
        if reused:
            raise ConfigError(
                f"{src}: search.confirm.seeds: {', '.join(map(str, reused))} also train the search's trials; "
                f"confirmation needs fresh seeds, or it re-measures the noise the search selected on"
            )
        if search.confirm.top > search.n_trials:
            raise ConfigError(
                f"{src}: search.confirm.top: {search.confirm.top} is more than search.n_trials ({search.n_trials})"
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
    try:  # Optuna's own checks of the option values, before any worker starts
        sweep.sampler(0, 0)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{src}: search.sampler: {' '.join(str(err).split())}") from None


def validate_sweep(path: str | Path) -> list[Sweep]:
    """The sweep in its default form and in every profile (``harness validate``)."""
    first = load_sweep(path)
    return [first] + [load_sweep(path, p) for p in first.spec.profiles]


def is_sweep_spec(path: str | Path) -> bool:
    data = read_yaml(path)
    return isinstance(data, dict) and "search" in data
