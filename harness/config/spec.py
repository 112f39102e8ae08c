"""Declarative ablation specs: YAML -> validated ``Spec`` -> the plan of jobs.

A spec names the arms of an ablation (training-time choices), the seeds, and the sampler settings
every trained model is evaluated with (no retraining). Profiles scale the same spec from a smoke
test to a GPU run.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .dotted import merge, related, set_dotted
from .fields import ConfigError, Int, Section, Seed
from .grid import MAX_RUNS, Evaluate, arm_settings
from .literature import MAX_ENTRIES, Entry, check_selections
from .run import Config, DiffusionConfig, ModelConfig, build_config, format_validation_error, override_origin, read_yaml
from .schema import METRICS, RUN_METRICS, arm_text
from .setting import SamplerSetting

MAX_EXCLUDES = 100  # each arm is checked against every exclude
# A spec's name and profile names become directory and run names: a short, plain file name.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME = Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]
# ``harness run SPEC`` without --profile, and ``make ablation-...``: the spec's quick profile (sized for a 2-core
# CPU) where it has one, else its base configuration (profile "default").
DEFAULT_PROFILE = "quick"


class Axes(Section):
    """Training-time choices. ``grid``: the cartesian product of dotted keys; ``zip``: groups of keys
    whose lists are paired element-wise (each group is one more grid dimension); ``include``: extra
    explicit arms; ``exclude``: partial arms removed from the product."""

    grid: dict[str, list[Any]] = {}
    zip: list[dict[str, list[Any]]] = []
    include: list[dict[str, Any]] = Field([], max_length=MAX_RUNS)
    exclude: list[dict[str, Any]] = Field([], max_length=MAX_EXCLUDES)

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

    def values(self) -> dict[str, list[Any]]:
        """Every key an arm sets, with the values the arms give it."""
        out: dict[str, list[Any]] = {k: list(v) for k, v in self.grid.items()}
        for part in [*self.zip, *({k: [v] for k, v in arm.items()} for arm in self.include)]:
            for key, vals in part.items():
                out.setdefault(str(key), []).extend(vals)
        return out

    def size(self) -> int:
        """How many arms the axes define at most (before excludes), computed without building them."""
        zips = [len(next(iter(group.values()), [])) for group in self.zip]
        return math.prod(len(v) for v in self.grid.values()) * math.prod(zips) + len(self.include)


def _distinct(seeds: list[int] | None) -> list[int] | None:
    """A seed listed twice would be one job planned twice (the same config hash), not two replicates."""
    if seeds is not None and (twice := sorted({s for s in seeds if seeds.count(s) > 1})):
        raise ValueError(f"seed {twice[0]} is listed twice; seeds are the replicates, each once")
    return seeds


Seeds = Annotated[list[Seed], Field(min_length=1), AfterValidator(_distinct)]


class Profile(Section):
    set: dict[str, Any] = {}  # dotted overrides of the base configuration
    seeds: Seeds | None = None
    evaluate: Evaluate | None = None
    cpu_jobs: Int | None = Field(None, ge=1)


class Spec(Section):
    name: NAME
    question: str = Field(max_length=2000)  # logged as an MLflow tag
    base: dict[str, Any] = {}
    axes: Axes = Axes()
    seeds: Seeds = [0]
    evaluate: Evaluate = Evaluate()
    profiles: dict[NAME, Profile] = {}
    cpu_jobs: Int = Field(1, ge=1)  # jobs in parallel on the CPU (torch threads are divided)
    jobs_per_gpu: Int = Field(2, ge=1)  # small MNIST models need several per GPU to fill it
    slurm: dict[str, Any] = {}  # submitit parameters: partition, gpus_per_node, timeout_min, ...
    # Equivalence margins of the report, metric -> the difference that does not matter (TOST, analysis/verdicts.py).
    margins: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = {}
    # What the papers found, as expectations on this spec's metrics (config/literature.py).
    literature: list[Entry] = Field([], max_length=MAX_ENTRIES)
    _shared_sources: dict[str, dict[str, str]] = PrivateAttr(default_factory=dict)  # with_shared_profiles

    @field_validator("margins")
    @classmethod
    def _known_metrics(cls, margins: dict[str, float]) -> dict[str, float]:
        known = [m for m, d in {**METRICS, **RUN_METRICS}.items() if d.lower_is_better is not None]
        for name in margins:
            if name not in known:
                raise ValueError(f"unknown metric {name!r}; valid: {', '.join(known)}")
        return margins

    @model_validator(mode="after")
    def _literature_fits(self):
        if why := check_selections(self.literature, self.axes.values()):
            raise ValueError(why)
        return self


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
        return arm_text(self.arm)


@dataclass
class Plan:
    spec: Spec
    source: str
    profile: str
    jobs: list[Job] = field(default_factory=list)

    @property
    def settings(self) -> list[dict[str, Any]]:
        """Every distinct setting of the plan, in plan order (arms of different processes have different ones)."""
        out = {s.key: s.model_dump() for job in self.jobs for s in job.config.eval.samplers}
        return list(out.values())


def expand_arms(axes: Axes) -> list[dict[str, Any]]:
    dims: list[list[dict[str, Any]]] = [[{key: v} for v in values] for key, values in axes.grid.items()]
    dims += [[dict(zip(group, vals)) for vals in zip(*group.values())] for group in axes.zip]
    arms = [merge_flat(combo) for combo in itertools.product(*dims)] if dims else [{}]
    arms = [a for a in arms if not any(all(a.get(k) == v for k, v in ex.items()) for ex in axes.exclude)]
    seen = {_arm_key(a) for a in arms}
    for extra in axes.include:
        if _arm_key(extra) not in seen:
            seen.add(_arm_key(extra))
            arms.append(dict(extra))
    return arms


def _arm_key(arm: dict[str, Any]) -> frozenset:
    return frozenset((str(k), repr(v)) for k, v in arm.items())


def merge_flat(parts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parts:
        out.update(p)
    return out


SHARED_PROFILES = "profiles"  # the folder beside the specs: profiles/<name>.yaml is profile <name> of each of them
SHIPPED_PROFILES = Path(__file__).resolve().parents[2] / "experiments" / SHARED_PROFILES  # the shipped specs' own


def profiles_folder(spec_path: str | Path) -> Path:
    """Where a spec's shared profiles are: ``profiles/`` beside it."""
    return Path(spec_path).parent / SHARED_PROFILES


def shared_profiles(spec_path: str | Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Profile name -> (its file, its fields): each file of ``profiles_folder`` is one profile
    (``experiments/profiles/smoke.yaml`` is every shipped spec's ``smoke``). Each file is validated on its
    own, so a mistake in it is a one-line error naming that file and field."""
    out = {}
    for file in sorted(profiles_folder(spec_path).glob("*.yaml")):
        data = read_yaml(file)
        try:
            Profile.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, str(file), root=Profile)) from None
        out[file.stem] = (file, data)
    return out


def with_shared_profiles(data: dict[str, Any], spec_path: str | Path) -> tuple[dict[str, Any], dict]:
    """The spec's ``data`` with the shared profiles (``shared_profiles``) added, and where each inherited
    ``set`` key came from ({profile: {key: file}}, so an error in one names the shared file).

    A spec's own profile of the same name extends the shared one: its ``set`` keys are added to the shared
    ``set`` (a key in both: the spec's value), and each other field it names (``seeds``, ``evaluate``,
    ``cpu_jobs``) replaces the shared one's; ``evaluate: null`` there means the spec's own ``evaluate``.
    """
    shared = shared_profiles(spec_path)
    own = data.get("profiles") or {}
    if not isinstance(own, dict):
        return data, {}  # a malformed profiles section: the schema reports it
    profiles = {name: fields for name, (_, fields) in shared.items()}
    sources = {}
    for name, prof in own.items():
        file, base = shared.get(name, (None, None))
        if isinstance(base, dict) and isinstance(prof, dict):
            own_set = prof.get("set") if isinstance(prof.get("set"), dict) else {}
            merged = {**base, **prof, "set": {**base.get("set", {}), **own_set}}
            sources[name] = {k: str(file) for k in base.get("set", {}) if k not in own_set}
            prof = merged
        profiles[name] = prof
    for name, (file, base) in shared.items():
        if name not in own:
            sources[name] = {k: str(file) for k in base.get("set", {})}
    return {**data, "profiles": profiles}, sources


def validate_spec(data: dict[str, Any], source: str | Path, *, shared: bool = True) -> Spec:
    """The ``Spec`` of a spec file's ``data`` (ablation or sweep), with its shared profiles (``shared``: False
    for data that holds them already, as a ``harness run -m`` spec does)."""
    data, sources = with_shared_profiles(data, source) if shared else (data, {})
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(source), root=Spec)) from None
    spec._shared_sources = sources
    return spec


def default_profile(spec: Spec) -> str | None:
    """The profile a run without ``--profile`` uses (``DEFAULT_PROFILE`` where the spec has it; None: the base)."""
    return DEFAULT_PROFILE if DEFAULT_PROFILE in spec.profiles else None


def load_spec(path: str | Path) -> Spec:
    """Parse and validate an ablation spec, with its shared profiles (``with_shared_profiles``)."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{path}: a spec is a mapping with name, question, base, axes, ...; this file is {kind}")
    if "search" in data:  # otherwise its profiles' search sections read as typos
        raise ConfigError(f"{path}: search: this is a sweep spec; run it with `harness sweep {path}`")
    refuse_orphaned_profiles(data, path)
    return validate_spec(data, path)


def refuse_orphaned_profiles(data: dict[str, Any], path: str | Path) -> None:
    """A shipped spec copied without its ``profiles/`` folder: its ``smoke: {}`` would train the base
    configuration under the name smoke, so an empty profile named like a shipped shared one is an error."""
    shared = shared_profiles(path)
    for name, prof in (data.get("profiles") or {}).items() if isinstance(data.get("profiles"), dict) else ():
        if prof == {} and name not in shared and (SHIPPED_PROFILES / f"{name}.yaml").is_file():
            raise ConfigError(
                f"{path}: profiles.{name}: extends the shared profile {SHARED_PROFILES}/{name}.yaml, which "
                f"is not beside this spec; copy {SHIPPED_PROFILES} next to it, or write the profile out"
            )


def make_plan(spec: Spec, source: str, profile: str | None = None, overrides: dict[str, Any] | None = None) -> Plan:
    """Resolve every job's configuration; any invalid combination is a ConfigError naming the field.

    Fields are applied in order: ``base``, the profile's ``set``, ``overrides`` (``--set``), the arm's
    axis values, the seed, the evaluation settings. A later layer may not silently replace an earlier
    one's choice: setting a key that an axis, ``seeds`` or ``evaluate`` decides is an error.
    """
    prof = Profile()
    if profile is not None:
        if profile not in spec.profiles:
            valid = ", ".join(sorted(spec.profiles)) or "none defined"
            raise ConfigError(f"{source}: profiles: unknown profile {profile!r}; valid: {valid}")
        prof = spec.profiles[profile]
    overrides = overrides or {}
    evaluate, eval_path = (spec.evaluate, "evaluate")
    if prof.evaluate:
        evaluate, eval_path = prof.evaluate, f"profiles.{profile}.evaluate"
    seeds, seeds_path = (prof.seeds, f"profiles.{profile}.seeds") if prof.seeds else (spec.seeds, "seeds")
    owners = _owners(spec.axes, seeds_path, eval_path)
    sets = [(f"{source}: profiles.{profile}.set.{k}", k, v) for k, v in prof.set.items()]
    for label, key, value in sets + [(f"--set {k}", k, v) for k, v in overrides.items()]:
        _check_not_owned(label, key, value, owners)
    runs = spec.axes.size() * len(seeds) * evaluate.size()
    if runs > MAX_RUNS:
        raise ConfigError(
            f"{source}: axes x seeds x evaluate: {runs:,} evaluation runs; a plan has at most {MAX_RUNS:,}"
        )

    base = dict(spec.base)
    for label, key, value in sets:
        base = _set(base, key, value, label)
    for key, value in overrides.items():
        base = _set(base, key, value, f"--set {key}")
    arms = expand_arms(spec.axes)
    if not arms:
        raise ConfigError(f"{source}: axes: every arm is excluded")
    configs = []
    for arm in arms:
        cfg = base
        for key, value in arm.items():
            cfg = _set(cfg, key, value, f"{source} (arm {arm_text(arm)})")
        configs.append(cfg)
    default_process = DiffusionConfig.model_fields["process"].default
    sections = [cfg.get("diffusion") if isinstance(cfg.get("diffusion"), dict) else {} for cfg in configs]
    processes = [str(d.get("process", default_process)) for d in sections]
    models = [cfg.get("model") if isinstance(cfg.get("model"), dict) else {} for cfg in configs]
    conditionals = [m.get("conditional", ModelConfig.model_fields["conditional"].default) is True for m in models]
    per_arm = arm_settings(evaluate.expand(eval_path), processes, source, eval_path, conditionals)

    def origin_in_spec(field: str, arm: dict[str, Any], settings):
        m = re.fullmatch(r"eval\.samplers(?:\.(\d+))?(?:\.(.+))?", field)
        if m:  # name the spec's own field (evaluate.steps), not the internal config path
            path = settings[int(m[1])][0] if m[1] else eval_path
            return source, path + (f".{m[2]}" if m[2] else "")
        if any(related(k, field) for k in arm):
            return f"{source} (arm {arm_text(arm)})", field
        set_key = next((k for k in prof.set if related(k, field)), None)
        if set_key is not None:  # the longer of the two paths: the set key, or the field inside its value
            path = f"set.{max(set_key, field, key=len)}"
            shared = spec._shared_sources.get(profile, {}).get(set_key)  # inherited from profiles/<name>.yaml
            return (shared, path) if shared else (source, f"profiles.{profile}.{path}")
        return source, f"base.{field}" if _has(spec.base, field) else field

    jobs, seen = [], set()
    for arm, cfg, settings in zip(arms, configs, per_arm):
        samplers = [{k: v for k, v in s.items() if k != "process"} for _, s in settings]
        origin = override_origin(overrides, lambda f, arm=arm, settings=settings: origin_in_spec(f, arm, settings))
        for seed in seeds:
            full = merge(set_dotted(cfg, "train.seed", seed), {"eval": {"samplers": samplers}})
            job = Job(arm=arm, seed=seed, config=build_config(full, source, origin))
            if job.config_hash in seen:
                raise ConfigError(f"{source}: axes: two arms resolve to the same configuration ({job.arm_label})")
            seen.add(job.config_hash)
            jobs.append(job)
    return Plan(spec=spec, source=source, profile=profile or "default", jobs=jobs)


def _owners(axes: Axes, seeds_path: str, eval_path: str) -> dict[str, str]:
    """Every dotted key the spec itself decides, with the section that decides it."""
    owners = {key: "axes.grid" for key in axes.grid}
    owners.update({key: "axes.zip" for group in axes.zip for key in group})
    owners.update({str(key): "axes.include" for arm in axes.include for key in arm if str(key) not in owners})
    owners["train.seed"] = seeds_path
    owners["eval.samplers"] = eval_path
    return owners


def _check_not_owned(label: str, key: str, value: Any, owners: dict[str, str]) -> None:
    for leaf in _leaves(key, value):
        owned = next((k for k in owners if related(leaf, k)), None)
        if owned is None:
            continue
        section = owners[owned]
        if owned == "eval.samplers":
            fields = ", ".join([*SamplerSetting.model_fields, "settings"])
            reason = f"the spec's {section} section decides the sampler settings; change its fields ({fields}) instead"
        elif owned == "train.seed":
            reason = f"the spec's {section} decide train.seed; change {section} instead"
        else:
            arms = "some arms" if section == "axes.include" else "every arm"
            reason = (
                f"{owned} is an axis of this spec: {section} sets it in {arms}, so this value would be ignored; "
                f"change {section} instead"
            )
        raise ConfigError(f"{label}: {reason}")


def _leaves(key: str, value: Any) -> list[str]:
    """The dotted keys that setting ``key`` to ``value`` writes (a mapping value writes each of its leaves)."""
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(f"{key}.{k}", v)]
    return [key]


def _has(d: Any, dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    if not isinstance(d, dict) or head not in d:
        return False
    return not rest or not isinstance(d[head], dict) or _has(d[head], rest)


def _set(config: dict, key: str, value: Any, where: str) -> dict:
    try:
        return set_dotted(config, key, value)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
