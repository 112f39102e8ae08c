"""``SamplerSetting``: the one schema of a sampler setting (``harness.config`` re-exports it).

Its own module so that the configuration stays readable; which settings fit which process is checked
where the process is known, in ``config.Config``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ..diffusion.processes import PROCESS_SAMPLERS, misfit
from ..diffusion.samplers import SPACINGS, VARIANCES, only_for
from .fields import Choice, Float, Int, Section


class SamplerSetting(Section):
    sampler: Choice({name for samplers in PROCESS_SAMPLERS.values() for name in samplers}, "sampler") = "ddim"
    steps: Int = Field(50, ge=1)
    eta: Float = Field(0.0, ge=0)
    guidance: Float = Field(0.0, ge=0)
    spacing: Choice(SPACINGS, "spacing") = "trailing"
    variance: Choice(VARIANCES, "variance") = "fixed_small"
    # Flow's time-grid shift (diffusion/flow.py: time_grid); 1 = none. Not ``shift``: pandas rows have one.
    time_shift: Float = Field(1.0, gt=0)
    # Classifier guidance (Dhariwal & Nichol 2021) with a noise-aware classifier; 0 = off.
    classifier_scale: Float = Field(0.0, ge=0, json_schema_extra={"label": "cg"})

    # Which sampler reads which option is declared once, with the sampler (diffusion/samplers.py SAMPLERS,
    # diffusion/flow.py FLOW_SAMPLERS); the checks below and the spec's grid read that declaration.

    @model_validator(mode="after")
    def _read(self):
        if why := unread(self.model_dump()):
            raise ValueError(why)
        return self

    def options(self) -> dict[str, Any]:
        """The options set away from their defaults (the sampler itself is not an option)."""
        defaults = {n: f.default for n, f in type(self).model_fields.items() if n != "sampler"}
        return {n: getattr(self, n) for n, d in defaults.items() if getattr(self, n) != d}

    def misfit(self, process: str, conditional: bool = True) -> tuple[str, str] | None:
        """Why this setting cannot sample a model of ``process`` (class-``conditional`` or not), as
        (field, reason); None when it can."""
        why = misfit(process, self.sampler, self.options())
        if not why and self.guidance > 0 and not conditional:
            return "guidance", f"{self.guidance} needs model.conditional: true"
        return why

    # This model is the one schema of a sampler setting: the spec's ``evaluate`` grid, the setting key,
    # the MLflow params of an evaluation run, the loader's columns and the labels all derive from its
    # fields, so a field added here is carried everywhere (a hand-kept list once dropped ``variance``).

    @property
    def key(self) -> tuple:
        """The identity of a setting: every field, so settings that differ in any field are two evaluations."""
        return tuple(sorted(self.model_dump().items()))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SamplerSetting:
        """Rebuild from logged params (strings are coerced); a field a run did not log takes its default."""
        return cls.model_validate({k: params[k] for k in cls.model_fields if k in params})

    @property
    def series(self) -> str:
        """The sampler without its step count and guidance, one line of a plot: 'ddim eta=0', 'ddpm
        variance=fixed_large'. An option only this sampler reads is named with its value; any other
        option away from its default is appended bare."""
        readers = _readers()
        own = [n for n in type(self).model_fields if readers.get(n) == {self.sampler}]
        rest = [n for n in self.options() if n not in (*own, "steps", "guidance")]
        named = [f"{n}={_show(getattr(self, n))}" for n in own]
        return " ".join([self.sampler, *named, *(_show(getattr(self, n)) for n in rest)])

    @property
    def label(self) -> str:
        """A short unique name such as ``ddim-50-eta0-w2``; other fields are appended when not default
        (``-cg2`` for a field whose schema names a label prefix, else the bare value)."""
        label = f"{self.sampler}-{self.steps}-eta{self.eta:g}-w{self.guidance:g}"
        for name, field in type(self).model_fields.items():
            if name not in ("sampler", "steps", "eta", "guidance") and getattr(self, name) != field.default:
                prefix = (field.json_schema_extra or {}).get("label")
                label += f"-{prefix}{getattr(self, name):g}" if prefix else f"-{getattr(self, name)}"
        return label


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _readers() -> dict[str, set[str]]:
    """Each option and the names of the samplers (of any process) that read it."""
    out: dict[str, set[str]] = {}
    for samplers in PROCESS_SAMPLERS.values():
        for name, s in samplers.items():
            for option in s.reads:
                out.setdefault(option, set()).add(name)
    return out


def unread(setting: dict[str, Any]) -> str | None:
    """Why a setting (its fields as a dict) sets an option that its sampler, by that name, never reads; None
    when none. Only options another sampler of the same process reads are named here (``eta`` on ``heun``);
    an option of another process (``time_shift`` on ``ddim``) is the process check's, ``misfit``'s."""
    homes = [samplers for samplers in PROCESS_SAMPLERS.values() if setting.get("sampler") in samplers]
    defaults = {n: f.default for n, f in SamplerSetting.model_fields.items() if n != "sampler"}
    for option, default in defaults.items():
        if setting.get(option, default) == default or any(option in s[setting["sampler"]].reads for s in homes):
            continue
        neighbours = {name: s for samplers in homes for name, s in samplers.items()}
        if any(option in s.reads for s in neighbours.values()):
            return only_for(option, setting["sampler"], neighbours)
    return None
