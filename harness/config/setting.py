"""``SamplerSetting``: the one schema of a sampler setting (``harness.config`` re-exports it).

Its own module so that the configuration stays readable; which settings fit which process is checked
where the process is known, in ``config.Config``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from ..diffusion.processes import PROCESS_SAMPLERS, misfit
from ..diffusion.samplers import SPACINGS, VARIANCES
from .fields import Float, Int, Section, one_of


class SamplerSetting(Section):
    sampler: str = "ddim"
    steps: Int = Field(50, ge=1)
    eta: Float = Field(0.0, ge=0)
    guidance: Float = Field(0.0, ge=0)
    spacing: str = "trailing"
    variance: str = "fixed_small"
    # Flow's time-grid shift (diffusion/flow.py: time_grid); 1 = none. Not ``shift``: pandas rows have one.
    time_shift: Float = Field(1.0, gt=0)
    # Classifier guidance (Dhariwal & Nichol 2021) with a noise-aware classifier; 0 = off. DDPM only.
    classifier_scale: Float = Field(0.0, ge=0, json_schema_extra={"label": "cg"})

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        return one_of(v, {name for samplers in PROCESS_SAMPLERS.values() for name in samplers}, "sampler")

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, v: str) -> str:
        return one_of(v, SPACINGS, "spacing")

    @field_validator("variance")
    @classmethod
    def _variance(cls, v: str) -> str:
        return one_of(v, VARIANCES, "variance")

    @model_validator(mode="after")
    def _eta(self):
        if self.eta != 0 and self.sampler != "ddim":
            raise ValueError(f"eta applies to the ddim sampler only, not {self.sampler!r}")
        return self

    def misfit(self, process: str, conditional: bool = True) -> tuple[str, str] | None:
        """Why this setting cannot sample a model of ``process`` (class-``conditional`` or not), as
        (field, reason); None when it can."""
        why = misfit(process, self.sampler, self.time_shift)
        # DDPM's timesteps; classifier guidance shifts eps_hat by sqrt(1 - abar_t) grad log p(y | x_t, t)
        for name in ("spacing", "variance", "classifier_scale") if process == "flow" and not why else ():
            if getattr(self, name) != type(self).model_fields[name].default:
                return name, f"{getattr(self, name)} applies to process ddpm only"
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
    def label(self) -> str:
        """A short unique name such as ``ddim-50-eta0-w2``; other fields are appended when not default
        (``-cg2`` for a field whose schema names a label prefix, else the bare value)."""
        label = f"{self.sampler}-{self.steps}-eta{self.eta:g}-w{self.guidance:g}"
        for name, field in type(self).model_fields.items():
            if name not in ("sampler", "steps", "eta", "guidance") and getattr(self, name) != field.default:
                prefix = (field.json_schema_extra or {}).get("label")
                label += f"-{prefix}{getattr(self, name):g}" if prefix else f"-{getattr(self, name)}"
        return label
