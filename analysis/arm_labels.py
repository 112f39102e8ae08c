"""An arm's identity as the tracking store holds it (the ``harness.arm`` tag, or plan.json), read back as
{dotted key: value}, its keys, and the short label plots and prose use."""

from __future__ import annotations

import json
import re
from typing import Any

LEGACY_ARM_KEY = re.compile(r"(?:^|, )([A-Za-z_]\w*(?:\.\w+)+)=")  # a dotted key opening each "key=value"


def arm_dict(arm: dict | str) -> dict[str, Any]:
    """An arm as {dotted key: value}, from plan.json or the ``harness.arm`` tag (JSON).

    Runs tracked before the tag became JSON hold the text ``key=value, key=value``; it is read by its
    dotted keys (a list value such as ``model.channel_mult=[1, 2]`` contains ", " itself), so reports
    of older stores keep their arms.
    """
    if isinstance(arm, dict):
        return arm
    try:
        parsed = json.loads(arm)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    if arm == "base":
        return {}
    keys, values = LEGACY_ARM_KEY.findall(arm), re.split(LEGACY_ARM_KEY, arm)[2::2]
    return dict(zip(keys, values))


def arm_keys(arm: dict | str) -> list[str]:
    """The dotted keys of an arm, in axis order."""
    return list(arm_dict(arm))


def arm_label(arm: dict | str) -> str:
    """A short name for plots and prose: the axis values in key order, ``v / min_snr`` for two axes."""
    values = arm_dict(arm).values()
    return " / ".join(str(v) for v in values) if values else "base"


def varying_fields(flats: list[dict[str, Any]]) -> list[str]:
    """The dotted config keys whose values differ between runs' flat configs: the arms of runs that have
    none (``harness train``), so two trainings with different ``--set`` compare as two arms. The seed, the
    evaluation and where a run ran are not what a comparison is about."""
    from harness.config.run import OPERATIONAL

    def operational(key: str) -> bool:
        section, _, name = key.partition(".")
        return name in OPERATIONAL.get(section, ())

    varying = [k for k in (flats[0] if flats else {}) if len({json.dumps(f.get(k)) for f in flats}) > 1]
    return [k for k in varying if k != "train.seed" and not k.startswith("eval.") and not operational(k)]
