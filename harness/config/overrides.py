"""Ablations from the command line: ``harness run -m diffusion.schedule=linear,cosine --seeds 0,1`` as spec data.

Hydra's override grammar where it fits (hydra.cc, "Basic/Extended Override syntax"): ``key=value`` sets a
field, ``key=a,b`` (or ``choice(a,b)``) sweeps it, ``key=range(start,stop[,step])`` sweeps numbers with
``stop`` excluded, as Python's ``range`` (floats too: ``range(0.1,0.4,0.1)`` is 0.1, 0.2, 0.3), ``'a,b'``
and ``"a b"`` are one string, ``[1,2]`` and ``{k: v}`` one value. Each sweep becomes an axis of the spec
(``axes.grid``), each fixed value a field of its ``base``, and ``evaluate.<field>`` a list of its evaluation
grid, so the result goes through the one spec path (``spec.validate_spec``, ``spec.make_plan``): dedup,
resume, hashes and reports are a spec file's. ``spec_yaml`` writes it as that file (``--print-spec``).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .dotted import related, set_dotted
from .fields import ConfigError
from .grid import Evaluate
from .run import OPERATIONAL, Config
from .spec import NAME_PATTERN
from .yamlio import YamlError, load_text

SWEEPS = ("range", "choice")  # Hydra's sweep functions this grammar reads
CLOSING = {"[": "]", "{": "}", "(": ")"}


@dataclass(frozen=True)
class Override:
    """One ``key=...`` of the command line: a fixed value, or a sweep over ``values``."""

    key: str
    values: list[Any]
    sweep: bool
    text: str  # as typed: error lines name it

    @property
    def value(self) -> Any:
        return self.values if not self.sweep and self.key.startswith("evaluate.") else self.values[0]


def split_top(text: str, what: str) -> list[str]:
    """``text`` split at the commas outside quotes and brackets (``a,'b,c',[1,2]`` is three parts)."""
    parts, depth, quote, start = [], [], None, 0
    for i, c in enumerate(text):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in CLOSING:
            depth.append(CLOSING[c])
        elif c in CLOSING.values():
            if not depth or depth.pop() != c:
                raise ConfigError(f"{what}: unbalanced {c!r}")
        elif c == "," and not depth:
            parts.append(text[start:i])
            start = i + 1
    if quote or depth:
        raise ConfigError(f"{what}: {f'unclosed quote {quote}' if quote else f'{depth[-1]!r} missing'}")
    return [*parts, text[start:]]


def element(token: str, what: str) -> Any:
    """One value: a quoted string as written, else YAML (true, null, [1, 2], {k: v}) with Hydra's numbers
    (``1e-3`` is a float, which YAML 1.1 reads as a string)."""
    token = token.strip()
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    if token == "":
        raise ConfigError(f"{what}: an empty value")
    try:
        value = load_text(token)
    except YamlError as err:
        raise ConfigError(f"{what}: {err}") from None
    if isinstance(value, str):
        for number in (int, float):
            try:
                return number(value) if math.isfinite(float(value)) else value
            except ValueError:
                continue
    return value


def hydra_range(args: list[Any], what: str) -> list[Any]:
    """``range(start, stop[, step])``: Python's range, floats allowed; each value is ``start + i * step``
    (not a running sum, so 0.1 steps do not drift)."""
    if not 2 <= len(args) <= 3 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{what}: range takes two or three numbers: range(start, stop[, step])")
    start, stop, step = (*args, 1) if len(args) == 2 else args
    if step == 0:
        raise ConfigError(f"{what}: range step 0")
    n = max(0, math.ceil(round((stop - start) / step, 9)))  # (0.4 - 0.1) / 0.1 is 3.0000000000000004
    if n == 0:
        raise ConfigError(f"{what}: range({start}, {stop}, {step}) is empty (stop is excluded)")
    if n > 1000:
        raise ConfigError(f"{what}: range of {n:,} values; an axis has at most 1,000")
    floats = any(isinstance(a, float) for a in args)
    return [round(start + i * step, 12) if floats else start + i * step for i in range(n)]


def parse(item: str) -> Override:
    """One override of ``-m``; a malformed one is a ConfigError naming it."""
    what = f"-m {item}"
    key, sep, raw = item.partition("=")
    key = key.strip()
    if key[:1] and key[0] in "+~":
        raise ConfigError(f"{what}: {key[0]}key is Hydra's way to add or delete a field; here every field exists")
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", key):
        raise ConfigError(f"{what}: expected key=value or key=a,b, e.g. diffusion.schedule=linear,cosine")
    raw = raw.strip()
    m = re.fullmatch(r"(\w+)\((.*)\)", raw, re.S)
    if m and m[1] in SWEEPS:
        args = [element(a, what) for a in split_top(m[2], what)]
        values = hydra_range(args, what) if m[1] == "range" else args
        return Override(key, values, True, item)
    parts = split_top(raw, what)
    return Override(key, [element(p, what) for p in parts], len(parts) > 1, item)


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` or ``--seeds range(0,5)``: the grammar of a sweep's values."""
    seeds = parse(f"seeds={text}").values
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"--seeds {text}: expected non-negative integers, e.g. --seeds 0,1,2")
    return seeds


# -- checking one override against the schema, before any spec is built ------------------------------------


def _field_error(model: type[BaseModel], key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the field at dotted ``key`` of ``model`` (its own type and bounds only; checks
    across fields wait for the whole config); None when it can."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part not in model.model_fields:
            valid = ", ".join(model.model_fields)
            return f"unknown key {'.'.join(parts[: i + 1])}; valid keys here: {valid}"
        inner = model.model_fields[part].annotation
        if i + 1 < len(parts) and isinstance(inner, type) and issubclass(inner, BaseModel):
            model = inner
            continue
        try:
            model.model_validate(set_dotted({}, ".".join(parts[i:]), value))
        except ValidationError as err:
            mine = [e for e in err.errors() if e["loc"][:1] == (part,)]
            if mine:
                e = mine[0]
                where = ".".join(str(p) for p in e["loc"][1:])
                msg = e["msg"].removeprefix("Value error, ")
                if e["type"] == "extra_forbidden":
                    msg = "unknown key"
                hint = " (a sweep is key=a,b)" if isinstance(value, list) and not where else ""
                return f"{where + ': ' if where else ''}{msg}{hint}"
        return None
    return None


def check(o: Override) -> None:
    """Each value of ``o`` against its field: an unknown key, a misspelt choice, a list for a number."""
    if o.key == "train.seed" or o.key == "seeds":
        raise ConfigError(f"-m {o.text}: seeds are --seeds 0,1,2 here")
    if related(o.key, "eval.samplers"):
        raise ConfigError(f"-m {o.text}: sampler settings are evaluate.<field> here, e.g. evaluate.steps=10,20,50")
    if o.key.startswith("evaluate."):
        values = o.values if o.sweep or not isinstance(o.values[0], list) else o.values[0]
        why = _field_error(Evaluate, o.key.removeprefix("evaluate."), values)
        if why:
            raise ConfigError(f"-m {o.text}: {why}")
        return
    for value in o.values:
        why = _field_error(Config, o.key, value)
        if why:
            raise ConfigError(f"-m {o.text}: {why}")


# -- the spec -----------------------------------------------------------------------------------------------

CLI_PREFIX = "cli"  # the experiment name of a -m run over the default config starts with it


def default_name(overrides: list[Override], base_name: str | None = None) -> str:
    """The experiment name of a -m run: ``cli-diffusion.schedule-linear-cosine`` (or ``<spec>-...``), from the
    overrides that change what is trained, in key order. Seeds, ``evaluate.*`` and operational fields are left
    out: adding a seed or a sampler setting extends the same experiment (its models are reused), as editing a
    spec does."""
    trained = sorted((o for o in overrides if _trains(o.key)), key=lambda o: o.key)
    words = [f"{o.key}-{'-'.join(_word(v) for v in o.values)}" for o in trained]
    name = f"{base_name or CLI_PREFIX}-{'_'.join(words)}" if words else (base_name or f"{CLI_PREFIX}-default")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    if len(name) > 80:  # NAME allows 100; the digest keeps long command lines apart
        name = f"{name[:70].rstrip('-._')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


def _trains(key: str) -> bool:
    """Whether ``key`` changes what is trained (not ``evaluate.*``, nor where or how often: ``train.device``)."""
    section, _, field = key.partition(".")
    return section != "evaluate" and field not in OPERATIONAL.get(section, ())


def _word(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def default_question(overrides: list[Override], spec_question: str | None = None) -> str:
    """The question a -m run asks unless ``--question`` says: how its sweeps change the samples."""
    sweeps = [o for o in overrides if o.sweep]
    if not sweeps:
        return spec_question or "How does this configuration do? (harness run -m, no axis swept)"
    parts = [f"{o.key} ({' vs '.join(_word(v) for v in o.values)})" for o in sweeps]
    return f"How {'does' if len(parts) == 1 else 'do'} {' and '.join(parts)} change the samples?"


def spec_data(
    items: list[str],
    *,
    base: dict[str, Any] | None = None,
    seeds: list[int] | None = None,
    name: str | None = None,
    question: str | None = None,
) -> dict[str, Any]:
    """The spec that ``harness run -m ITEMS`` runs: over ``base`` (a spec's data with its shared profiles
    inlined; None: the default config with the shipped shared profiles), each sweep an axis of
    ``axes.grid`` (replacing a grid axis of the same key), each fixed value a field of ``base``, and
    ``evaluate.<field>`` that field's list. The command line wins over every profile: a profile's ``set`` key
    that an override touches takes the override's value, and ``seeds`` and ``evaluate.*`` replace a profile's.
    The profiles are written out whole, so the YAML of the result runs the same plan wherever it is saved."""
    from .spec import SHIPPED_PROFILES, Axes, shared_profiles

    overrides = [parse(i) for i in items]
    seen: dict[str, str] = {}
    for o in overrides:
        clash = next((k for k in seen if related(k, o.key)), None)
        if clash:
            raise ConfigError(f"-m {o.text}: {clash} is given twice ({seen[clash]}); keep one")
        seen[o.key] = o.text
        check(o)
    data = dict(base) if base is not None else {}
    if base is None:
        shipped = shared_profiles(SHIPPED_PROFILES.parent / "spec.yaml")
        data["profiles"] = {n: fields for n, (_, fields) in shipped.items()}
    data["name"] = name or default_name(overrides, base.get("name") if base else None)
    data["question"] = question or default_question(overrides, base.get("question") if base else None)
    axes = Axes.model_validate(data.get("axes") or {}).model_dump(exclude_defaults=True)  # a bad one: the spec's
    grid, owners = dict(axes.get("grid", {})), {k: "axes.zip" for g in axes.get("zip", []) for k in g}
    owners.update({k: "axes.include" for arm in axes.get("include", []) for k in arm})
    evaluate = dict(data.get("evaluate") or {})
    spec_base = dict(data.get("base") or {})
    profiles = {n: dict(p or {}) for n, p in (data.get("profiles") or {}).items()}
    for o in overrides:
        if o.key.startswith("evaluate."):
            evaluate[o.key.removeprefix("evaluate.")] = o.values if o.sweep else _as_list(o.values[0])
            continue
        owned = next((k for k in owners if related(k, o.key)), None)
        if owned:
            raise ConfigError(f"-m {o.text}: {owned} is decided by the spec's {owners[owned]}; edit the spec")
        for k in [k for k in grid if related(k, o.key)]:
            del grid[k]  # the command line's axis (or fixed value) replaces the spec's
        if o.sweep:
            grid[o.key] = o.values
        else:
            spec_base = set_dotted(spec_base, o.key, o.value)
        for prof in profiles.values():  # the command line wins over each profile's own value
            own = prof.get("set") or {}
            if any(related(k, o.key) for k in own):
                kept = {k: v for k, v in own.items() if not related(k, o.key)}
                prof["set"] = kept if o.sweep else {**kept, o.key: o.value}
    grid_fields = {
        o.key.removeprefix("evaluate."): evaluate[o.key.removeprefix("evaluate.")]
        for o in overrides
        if o.key.startswith("evaluate.")
    }
    for prof in profiles.values():
        if seeds and prof.get("seeds"):
            prof["seeds"] = seeds
        if prof.get("evaluate") and grid_fields:
            prof["evaluate"] = {**prof["evaluate"], **grid_fields}
    data.update(base=spec_base, axes={**axes, "grid": grid} if grid or len(axes) > 1 else {})
    if seeds:
        data["seeds"] = seeds
    if evaluate:
        data["evaluate"] = evaluate
    data["profiles"] = profiles
    if not re.fullmatch(NAME_PATTERN, data["name"]):
        raise ConfigError(f"--name {data['name']!r}: letters, digits, '_', '.', '-', starting with a letter or digit")
    return {k: v for k, v in data.items() if v not in ({}, None) or k in ("name", "question")}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):  # a list shared by two fields is written twice, not as &id001 / *id001
        return True


ORDER = ("name", "question", "base", "axes", "seeds", "evaluate", "profiles")


def spec_yaml(data: dict[str, Any], command: str | None = None) -> str:
    """The spec as the YAML file ``harness run`` reads back into the same data (and so the same plan)."""
    ordered = {k: data[k] for k in ORDER if k in data} | {k: v for k, v in data.items() if k not in ORDER}
    head = f"# written by: {command}\n" if command else ""
    text = yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=110, allow_unicode=True)
    if load_text(text) != ordered:  # a value YAML would read back differently: refuse rather than write it
        raise ConfigError("--print-spec: a value does not survive YAML; write the spec by hand")
    return head + text
