"""Dotted keys over nested dicts: ``train.lr=3e-4`` overrides, deep merges, and flat views for MLflow params."""

from __future__ import annotations

import json
from typing import Any

from .fields import ConfigError
from .yamlio import YamlError, load_text


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def unflatten(flat: dict[str, Any], keys) -> dict:
    """``flatten`` read back from MLflow params (strings): lists and mappings from JSON, "None" as None. A key
    not in ``keys`` (a field of another harness version) is left out."""
    nested: dict = {}
    for key, text in flat.items():
        if key in keys:
            value = None if text == "None" else json.loads(text) if str(text)[:1] in "[{" else text
            nested = set_dotted(nested, key, value)
    return nested


def parse_override(item: str) -> tuple[str, Any]:
    """``key.sub=value`` with the value read as YAML (so 1e-3, true, [1, 2] work), within yamlio's limits."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.steps=200")
    try:
        return key, load_text(raw)
    except YamlError as err:
        raise ConfigError(f"--set {key}: {err}") from None


def parse_overrides(items) -> dict[str, Any]:
    """Every ``--set``, in order; a key given twice is an error rather than a silent last-wins."""
    out: dict[str, Any] = {}
    for item in items:
        key, value = parse_override(item)
        if key in out:
            raise ConfigError(f"--set {key}: given twice; keep one")
        out[key] = value
    return out


def related(a: str, b: str) -> bool:
    """Whether setting dotted key ``a`` touches dotted key ``b`` (equal, or one inside the other)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def set_dotted(d: dict, key: str, value: Any, _path: str = "") -> dict:
    """Return a copy of the nested dict ``d`` with ``key`` (dotted) set."""
    head, _, rest = str(key).partition(".")
    out = dict(d)
    if rest:
        inner = out.get(head)
        if inner is not None and not isinstance(inner, dict):
            raise ConfigError(f"{_path}{head}: expected a mapping, got {type(inner).__name__}")
        out[head] = set_dotted(inner or {}, rest, value, f"{_path}{head}.")
    else:
        out[head] = value
    return out


def merge(base: dict, over: dict) -> dict:
    """Deep merge: ``over``'s leaves replace ``base``'s."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
