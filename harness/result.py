"""One evaluation's result: which sampler setting, at which training step, and its metrics.

Everything that reads an evaluation (the training loop's checkpoint, ``harness train``'s summary, the
runner's run lines and MLflow runs, a sweep's objective) takes this object, so a metric's name is
spelled once, in ``schema.METRICS``. Checkpoints hold it as plain data (``to_dict``), because they are
loaded with ``weights_only=True``, which accepts no classes of ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import SamplerSetting
from .config.schema import METRICS

UNAVAILABLE = "_unavailable"  # ``fid_inception_unavailable``: why a metric has no value (offline weights)


@dataclass(frozen=True)
class EvalResult:
    step: int
    setting: SamplerSetting
    metrics: dict[str, float]  # names from schema.METRICS only
    unavailable: dict[str, str] = field(default_factory=dict)  # metric -> why it has no value

    def __post_init__(self):
        unknown = sorted(set(self.metrics) - set(METRICS)) + sorted(set(self.unavailable) - set(METRICS))
        if unknown:  # a typo here would silently never reach a report
            raise KeyError(f"not metrics of schema.METRICS: {', '.join(unknown)}")

    @property
    def label(self) -> str:
        return self.setting.label

    def why_missing(self, metric: str) -> str:
        return self.unavailable.get(metric, "not in the evaluation result")

    def to_dict(self) -> dict[str, Any]:
        """Flat plain data, as ``harness train --json`` writes it and checkpoints store it."""
        return {
            "step": self.step,
            "setting": self.label,
            **self.setting.model_dump(),
            **self.metrics,
            **{m + UNAVAILABLE: why for m, why in self.unavailable.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        return cls(
            step=int(d["step"]),
            setting=SamplerSetting.from_params(d),
            metrics={k: d[k] for k in METRICS if k in d},
            unavailable={k: d[k + UNAVAILABLE] for k in METRICS if k + UNAVAILABLE in d},
        )
