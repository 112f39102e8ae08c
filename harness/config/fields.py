"""The typed fields every configuration section is built from, and the one-line ``ConfigError``.

Below ``config`` and ``setting`` so that both use them; ``harness.config`` re-exports every name.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Le
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict


class ConfigError(ValueError):
    """A bad configuration or spec, reported as one line naming the file and the field.

    The line is printed as is: control characters that a hostile key or value could carry (a newline,
    a terminal escape) are shown escaped, and a very long line is cut, so one error is one line.
    """

    MAX_CHARS = 1000

    def __init__(self, message: str):
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(message))
        super().__init__(text if len(text) <= self.MAX_CHARS else text[: self.MAX_CHARS - 3] + "...")


def one_of(value: str, valid, what: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(sorted(valid))}")
    return value


def Choice(valid, what: str):  # noqa: N802 - used as a type: ``schedule: Choice(SCHEDULES, "schedule")``
    """A name that must be a key of the registry ``valid``; any other is "unknown <what> ...; valid: ...".

    The registry is read when a value is checked, so entries added to it later are valid names too.
    """
    return Annotated[str, AfterValidator(lambda v: one_of(v, valid, what))]


def _not_bool(v):
    # Pydantic reads true as 1; "steps: true" is a mistake, not one step. (ValueError, not TypeError:
    # pydantic turns only ValueError into a validation error.)
    if isinstance(v, bool):
        raise ValueError(f"expected a number, not the boolean {str(v).lower()}")  # noqa: TRY004
    return v


Int = Annotated[int, BeforeValidator(_not_bool), Le(2**63 - 1)]  # every count and seed fits in an int64
Float = Annotated[float, BeforeValidator(_not_bool)]  # finite: Section forbids inf and nan
Seed = Annotated[Int, Ge(0)]


class Section(BaseModel):
    # Non-finite floats are refused: ``lr: .inf`` would pass ``gt=0`` and then serialize as null.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
