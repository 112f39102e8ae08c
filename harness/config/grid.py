"""A spec's ``evaluate`` section: the grid over sampler settings every trained model is evaluated with, and
which of its settings fit which arm (its process, and whether its model is class-conditional)."""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any

from pydantic import Field, ValidationError, create_model, field_validator

from ..diffusion.processes import PROCESS_SAMPLERS
from .fields import ConfigError, Section, one_of
from .setting import SamplerSetting, unread

MAX_RUNS = 10_000  # evaluation runs in one plan (arms x seeds x settings), counted before any is built


class _EvaluateBase(Section):
    settings: list[dict[str, Any]] = Field([], max_length=MAX_RUNS)  # extra settings, e.g. {sampler: ddpm, steps: 1000}

    @field_validator("settings")
    @classmethod
    def _setting_keys(cls, v):
        for i, s in enumerate(v):
            unknown = sorted(map(str, set(s) - {*SamplerSetting.model_fields, "process"}))
            if unknown:
                valid = ", ".join([*SamplerSetting.model_fields, "process"])
                raise ValueError(f"{i}: unknown key {unknown[0]!r}; valid keys here: {valid}")
            try:  # an explicit setting may name the process whose arms it is for (arm_settings)
                one_of(str(s.get("process", "ddpm")), PROCESS_SAMPLERS, "process")
            except ValueError as err:
                raise ValueError(f"{i}.process: {err}") from None
        return v

    def size(self) -> int:
        """How many settings at most, computed without building them."""
        return math.prod(len(getattr(self, n)) for n in SamplerSetting.model_fields) + len(self.settings)

    def expand(self, path: str = "evaluate") -> list[tuple[str, dict[str, Any]]]:
        """Every distinct setting, each with the spec field it came from (``evaluate`` or ``evaluate.settings.2``)."""
        names = list(SamplerSetting.model_fields)
        defaults = {n: f.default for n, f in SamplerSetting.model_fields.items()}
        grid = [(path, dict(zip(names, combo))) for combo in itertools.product(*(getattr(self, n) for n in names))]
        grid = [(p, s) for p, s in grid if not unread(s)]  # eta with ddpm: an option its sampler never reads
        extra = [(f"{path}.settings.{i}", {**defaults, **s}) for i, s in enumerate(self.settings)]
        out, seen = [], set()
        for p, s in grid + extra:
            key = repr(sorted(s.items()))
            if key not in seen:
                seen.add(key)
                out.append((p, s))
        return out


# Which settings an arm is evaluated with: those that fit its process (the sampler is one of that
# process's samplers, and each option one that sampler reads there: SamplerSetting.misfit),
# and of the explicit settings that name a ``process``, only the arms of that process (``heun`` samples
# both); an explicit setting with classifier-free guidance goes to the class-conditional arms only. A
# grid combination that fits no arm is dropped, as one with an option its sampler never reads is; an explicit
# setting that fits no arm is an error, and so is an arm that no setting fits.
def misfit_in(setting: dict[str, Any], process: str, conditional: bool = True) -> tuple[str, str] | None:
    """Why ``setting`` (a spec's, with its optional ``process``) skips arms of ``process``; None: it fits."""
    if setting.get("process", process) != process:
        return "process", f"{setting['process']} is not the arms' process ({process})"
    try:
        checked = SamplerSetting.model_validate({k: v for k, v in setting.items() if k != "process"})
    except ValidationError:
        return None  # every arm gets it, and the config check names what is wrong
    return checked.misfit(process, conditional) if process in PROCESS_SAMPLERS else None


def arm_settings(
    settings: list[tuple[str, dict[str, Any]]],
    processes: list[str],
    source: str,
    eval_path: str,
    conditionals: list[bool] | None = None,
) -> list[list[tuple[str, dict[str, Any]]]]:
    """The settings of each arm (given its process and whether its model is class-conditional), each with
    the spec field it came from. The grid ignores ``conditionals``: guidance on an unconditional model
    there is the config check's one-line error, not a silently dropped value."""
    kinds = list(zip(processes, conditionals or [True] * len(processes)))
    per_arm = [
        [(p, s) for p, s in settings if not misfit_in(s, process, conditional or p == eval_path)]
        for process, conditional in kinds
    ]
    for path, s in settings:
        whys = [misfit_in(s, process, conditional) for process, conditional in dict.fromkeys(kinds)]
        if path != eval_path and all(whys):
            field, why = next((w for w in whys if w[0] != "process"), whys[0])
            raise ConfigError(f"{source}: {path}.{field}: {why}")
    for process, chosen in zip(processes, per_arm):
        if not chosen:
            valid = ", ".join(PROCESS_SAMPLERS[process])
            raise ConfigError(f"{source}: {eval_path}: no setting fits process {process}; its samplers: {valid}")
    return per_arm


# A grid over sampler settings: one list per field of ``SamplerSetting`` (each list is one dimension,
# defaulting to that field's default), plus explicit ``settings``. Derived, with each field's type and
# bounds, so a new setting field is a new evaluation axis without touching this file.
def _checked(f) -> Any:
    return Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation  # the type with its bounds


Evaluate = create_model(
    "Evaluate",
    __base__=_EvaluateBase,
    **{n: (list[_checked(f)], [f.default]) for n, f in SamplerSetting.model_fields.items()},
)
