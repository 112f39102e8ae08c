"""A spec's ``literature`` section: what a paper found, as an expectation this harness can check.

Each entry names its source (authors, year, table or figure, the public code that reproduces it, and how
its figures were checked), the published claim in words, the published figures for display, how the
paper's setting differs from ours, and ``expect``: the claim as a statement about this spec's metrics.

An expectation is one of four kinds, each over *selections* of the evaluations: a selection is a mapping
of the spec's axis keys (``diffusion.schedule: cosine``) and sampler-setting fields (``sampler: ddim``,
``steps: 10``, ``guidance: 3.0``) to values, and picks one arm at one setting.

- ``direction``: ``better`` is better than ``than`` on ``metric`` (cosine's FID <= linear's);
- ``monotone``: along a numeric setting field (``steps``, ``guidance``, ...) the metric ``gets`` better
  (or worse), optionally flattening after a value (DDIM's FID falls with steps and flattens after 50);
- ``ordering``: the selections ``order`` are best first (an ordering across settings);
- ``equivalent``: ``a`` and ``b`` differ by less than ``margin`` (bf16 training ends where fp32 does).

Where the paper's setting differs (CIFAR-10 vs MNIST digits, InceptionV3 vs our classifier's features,
their budget vs ours) the expectation is about direction or shape, never values: the figures are for
display. ``analysis/literature.py`` turns each into a verdict; docs/literature.md describes both.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from .fields import Float, Int, Section
from .schema import METRICS, RUN_METRICS
from .setting import SamplerSetting

# The metrics an expectation may name: every evaluation metric and the run's final loss. Those without a
# direction (sampling seconds, NFE) need ``lower_is_better`` in the expectation.
KNOWN_METRICS = {**METRICS, **RUN_METRICS}
# A sampler-setting field along which quality can change in order (steps, eta, guidance, ...).
ORDERED_FIELDS = tuple(n for n, f in SamplerSetting.model_fields.items() if f.annotation in (int, float, Int, Float))
MAX_ENTRIES = 50

Scalar = str | bool | int | float
Selection = Annotated[dict[str, Scalar], Field(min_length=1, max_length=20)]


class Source(Section):
    authors: str = Field(min_length=1, max_length=300)
    year: Int = Field(ge=1900, le=2100)
    title: str = Field(min_length=1, max_length=300)
    where: str = Field(min_length=1, max_length=300)  # table, figure or section of the paper
    code: str = Field("", max_length=300)  # the public code that reproduces the figures, if any
    checked: str = Field(min_length=1, max_length=1000)  # how the figures were checked against the paper


class Figure(Section):
    """One published number, for display: never compared with ours (another data set, metric, scale)."""

    setting: str = Field(min_length=1, max_length=200)  # e.g. "eta = 0, S = 10 steps"
    value: Float
    metric: str = Field(min_length=1, max_length=200)  # e.g. "FID (CIFAR-10, 50k samples, InceptionV3)"


class _Expectation(Section):
    metric: str
    # Needed for a metric without a direction in the schema (sample_seconds): which way is better.
    lower_is_better: bool | None = None

    @model_validator(mode="after")
    def _known_metric(self):
        m = KNOWN_METRICS.get(self.metric)
        if m is None:
            raise ValueError(f"unknown metric {self.metric!r}; valid: {', '.join(KNOWN_METRICS)}")
        if m.lower_is_better is None and self.lower_is_better is None:
            raise ValueError(f"{self.metric} has no better direction; say which with lower_is_better: true or false")
        return self

    @property
    def lower(self) -> bool:
        """Whether a lower value of ``metric`` is better."""
        return self.lower_is_better if self.lower_is_better is not None else KNOWN_METRICS[self.metric].lower_is_better

    def selections(self) -> list[dict[str, Any]]:
        raise NotImplementedError


class Direction(_Expectation):
    kind: Literal["direction"]
    better: Selection
    than: Selection

    def selections(self):
        return [self.better, self.than]


class Monotone(_Expectation):
    kind: Literal["monotone"]
    along: str
    gets: Literal["better", "worse"] = "better"  # as ``along`` grows
    where: dict[str, Scalar] = {}
    flattens_after: Float | None = None  # the gain beyond this value is smaller than the gain up to it

    @field_validator("along")
    @classmethod
    def _ordered(cls, v: str) -> str:
        if v not in ORDERED_FIELDS:
            raise ValueError(f"along {v!r} is not a numeric setting field; valid: {', '.join(ORDERED_FIELDS)}")
        return v

    @model_validator(mode="after")
    def _not_fixed(self):
        if self.along in self.where:
            raise ValueError(f"where fixes {self.along}, the field the curve runs along")
        return self

    def selections(self):
        return [self.where]


class Ordering(_Expectation):
    kind: Literal["ordering"]
    order: list[Selection] = Field(min_length=2, max_length=20)  # best first

    def selections(self):
        return list(self.order)


class Equivalent(_Expectation):
    kind: Literal["equivalent"]
    a: Selection
    b: Selection
    margin: Float = Field(gt=0)  # the difference that does not matter, in the metric's units

    def selections(self):
        return [self.a, self.b]


Expectation = Annotated[Direction | Monotone | Ordering | Equivalent, Field(discriminator="kind")]


class Entry(Section):
    source: Source
    claim: str = Field(min_length=1, max_length=2000)  # the published claim, in words
    expect: Expectation | None = None
    unchecked: str = Field("", max_length=1000)  # without ``expect``: why the claim is not checkable here
    figures: list[Figure] = Field([], max_length=50)
    differences: str = Field(min_length=1, max_length=2000)  # the paper's setting against ours

    @model_validator(mode="after")
    def _checkable_or_why(self):
        if self.expect is None and not self.unchecked:
            raise ValueError("an entry without expect says why in unchecked")
        if self.expect is not None and self.unchecked:
            raise ValueError("an entry with expect is checked; drop unchecked")
        return self


def check_selections(entries: list[Entry], axes: dict[str, list[Any] | None]) -> str | None:
    """Why a selection of ``entries`` cannot pick anything in a spec with these axes ({dotted key: its grid
    values, or None where the values are not listed}), as ``"literature.<i>.expect: ..."``; None when all fit."""
    fields = set(SamplerSetting.model_fields)
    for i, entry in enumerate(entries):
        if entry.expect is None:
            continue
        for sel in entry.expect.selections():
            for key, value in sel.items():
                if key not in axes and key not in fields:
                    valid = ", ".join([*axes, *fields])
                    return f"literature.{i}.expect: unknown key {key!r}; valid: {valid}"
                values = axes.get(key)
                if values is not None and not any(same(value, v) for v in values):
                    listed = ", ".join(map(str, values))
                    return f"literature.{i}.expect: {key} = {value!r} is not one of the axis's values ({listed})"
    return None


def same(a: Any, b: Any) -> bool:
    """Whether a selection's value ``a`` names the value ``b`` of a table or spec (1 and 1.0 are one value;
    results tables read back booleans and numbers as text)."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).strip().lower() == str(b).strip().lower()
