"""Declarative ablation specs: YAML -> validated ``Spec`` -> the plan of jobs.

A spec names the arms of an ablation (training-time choices), the seeds, and the sampler settings
every trained model is evaluated with (no retraining). Profiles scale the same spec from a smoke
test to a GPU run.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from .config import Config, ConfigError, SamplerSetting, build_config, format_validation_error, merge, read_yaml, set_dotted


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Axes(_Strict):
    """Training-time choices. ``grid``: the cartesian product of dotted keys; ``zip``: groups of keys
    whose lists are paired element-wise (each group is one more grid dimension); ``include``: extra
    explicit arms; ``exclude``: partial arms removed from the product."""

    grid: dict[str, list[Any]] = {}
    zip: list[dict[str, list[Any]]] = []
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = []

    @field_validator("grid")
    @classmethod
    def _nonempty(cls, v):
        for key, values in v.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
        return v

    @field_validator("zip")
    @classmethod
    def _same_length(cls, v):
        for group in v:
            lengths = {len(vals) for vals in group.values()}
            if len(lengths) > 1 or 0 in lengths:
                raise ValueError(f"zip group {sorted(group)} needs lists of one common, non-zero length")
        return v


class _EvaluateBase(_Strict):
    settings: list[dict[str, Any]] = []  # extra explicit settings, e.g. {sampler: ddpm, steps: 1000}

    def expand(self) -> list[dict[str, Any]]:
        names = list(SamplerSetting.model_fields)
        defaults = {n: f.default for n, f in SamplerSetting.model_fields.items()}
        grid = [dict(zip(names, combo)) for combo in itertools.product(*(getattr(self, n) for n in names))]
        grid = [s for s in grid if not (s["eta"] != 0 and s["sampler"] != "ddim")]  # eta only means something for DDIM
        out: list[dict[str, Any]] = []
        for s in grid + [{**defaults, **s} for s in self.settings]:
            if s not in out:
                out.append(s)
        return out


# A grid over sampler settings: one list per field of ``SamplerSetting`` (each list is one dimension,
# defaulting to that field's default), plus explicit ``settings``. Derived, so a new setting field is
# a new evaluation axis without touching this file.
Evaluate = create_model(
    "Evaluate", __base__=_EvaluateBase,
    **{n: (list[f.annotation], [f.default]) for n, f in SamplerSetting.model_fields.items()},
)


class Profile(_Strict):
    set: dict[str, Any] = {}  # dotted overrides of the base configuration
    seeds: list[int] | None = None
    evaluate: Evaluate | None = None
    cpu_jobs: int | None = Field(None, ge=1)


class Spec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    question: str
    base: dict[str, Any] = {}
    axes: Axes = Axes()
    seeds: list[int] = Field([0], min_length=1)
    evaluate: Evaluate = Evaluate()
    profiles: dict[str, Profile] = {}
    cpu_jobs: int = Field(1, ge=1)  # jobs in parallel on the CPU (torch threads are divided)
    jobs_per_gpu: int = Field(2, ge=1)  # small MNIST models need several per GPU to fill it
    slurm: dict[str, Any] = {}  # submitit parameters: partition, gpus_per_node, timeout_min, ...


@dataclass(frozen=True)
class Job:
    """One training run: an arm at a seed, with the evaluation settings of the plan."""

    arm: dict[str, Any]  # the axis values that define the arm (dotted keys)
    seed: int
    config: Config

    @property
    def config_hash(self) -> str:
        return self.config.train_hash()

    @property
    def arm_label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.arm.items()) or "base"


@dataclass
class Plan:
    spec: Spec
    source: str
    profile: str
    jobs: list[Job] = field(default_factory=list)

    @property
    def settings(self) -> list[dict[str, Any]]:
        return [s.model_dump() for s in self.jobs[0].config.eval.samplers] if self.jobs else []


def expand_arms(axes: Axes) -> list[dict[str, Any]]:
    dims: list[list[dict[str, Any]]] = [[{key: v} for v in values] for key, values in axes.grid.items()]
    dims += [[dict(zip(group, vals)) for vals in zip(*group.values())] for group in axes.zip]
    arms = [merge_flat(combo) for combo in itertools.product(*dims)] if dims else [{}]
    arms = [a for a in arms if not any(all(a.get(k) == v for k, v in ex.items()) for ex in axes.exclude)]
    for extra in axes.include:
        if extra not in arms:
            arms.append(dict(extra))
    return arms


def merge_flat(parts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parts:
        out.update(p)
    return out


def load_spec(path: str | Path) -> Spec:
    data = read_yaml(path)
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{path}: a spec is a mapping with name, question, base, axes, ...; this file is {kind}")
    try:
        return Spec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path), root=Spec)) from None


def make_plan(spec: Spec, source: str, profile: str | None = None, overrides: dict[str, Any] | None = None) -> Plan:
    """Resolve every job's configuration; any invalid combination is a ConfigError naming the field."""
    prof = Profile()
    if profile is not None:
        if profile not in spec.profiles:
            valid = ", ".join(sorted(spec.profiles)) or "none defined"
            raise ConfigError(f"{source}: profiles: unknown profile {profile!r}; valid: {valid}")
        prof = spec.profiles[profile]
    base = dict(spec.base)
    for key, value in {**prof.set, **(overrides or {})}.items():
        base = _set(base, key, value, source)
    evaluate = prof.evaluate or spec.evaluate
    seeds = prof.seeds or spec.seeds
    arms = expand_arms(spec.axes)
    if not arms:
        raise ConfigError(f"{source}: axes: every arm is excluded")
    jobs, seen = [], set()
    for arm in arms:
        cfg = base
        for key, value in arm.items():
            cfg = _set(cfg, key, value, source)
        for seed in seeds:
            full = merge(set_dotted(cfg, "train.seed", seed), {"eval": {"samplers": evaluate.expand()}})
            where = f"{source} (arm {', '.join(f'{k}={v}' for k, v in arm.items()) or 'base'})"
            job = Job(arm=arm, seed=seed, config=build_config(full, where))
            if job.config_hash in seen:
                raise ConfigError(f"{source}: axes: two arms resolve to the same configuration ({job.arm_label})")
            seen.add(job.config_hash)
            jobs.append(job)
    return Plan(spec=spec, source=source, profile=profile or "default", jobs=jobs)


def _set(config: dict, key: str, value: Any, source: str) -> dict:
    try:
        return set_dotted(config, key, value)
    except ConfigError as err:
        raise ConfigError(f"{source}: base.{err}") from None
