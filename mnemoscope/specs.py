"""Parsing what users type: sizes (``100k``, ``1.5M``), and ``name:options`` specs."""
from __future__ import annotations

import re
from typing import Any

import yaml

from .errors import UserError
from .registry import Registry

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def parse_count(text: str | int | float, what: str = "count", minimum: int = 1) -> int:
    """``100k`` -> 100000, ``1.5M`` -> 1500000, ``2e5`` -> 200000. Refuses zero and negatives."""
    if isinstance(text, bool):
        raise UserError(f"malformed {what} {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)\s*([kmgb]?)\s*", str(text), re.IGNORECASE)
        if not m and re.fullmatch(r"\s*-\s*[0-9.]+(?:e[+-]?[0-9]+)?\s*[kmgb]?\s*", str(text), re.IGNORECASE):
            raise UserError(f"{what} must be positive, got {text!r}")
        if not m:
            raise UserError(f"malformed {what} {text!r}: write a number such as 100k, 1.5M or 200000")
        value = float(m.group(1).replace("_", "")) * _SUFFIX[m.group(2).lower()]
    if value != value:
        raise UserError(f"malformed {what} {text!r}")
    if value < 0:
        raise UserError(f"{what} must be positive, got {text!r}")
    if value < minimum:
        raise UserError(f"{what} must be at least {minimum}, got {text!r}")
    return int(round(value))


def is_class_path(spec: str) -> bool:
    """True for ``package.module:Class`` and ``path/to/file.py:Class`` (not ``name:options`` nor
    ``name:PATH``)."""
    target, sep, attr = str(spec).rpartition(":")
    return bool(sep) and attr.isidentifier() and (target.endswith(".py") or "." in target or "/" in target)


def spec_label(spec: str) -> str:
    """What plots, tables and run ids call an architecture or task: the class name of
    ``file.py:Class`` and ``module:Class`` (its path stays in config.yaml), else the spec itself."""
    return str(spec).rpartition(":")[2] if is_class_path(spec) else str(spec)


def spec_labels(specs) -> dict[str, str]:
    """:func:`spec_label` of each spec; specs whose labels would coincide keep their full text."""
    specs = list(dict.fromkeys(str(s) for s in specs))
    labels = {s: spec_label(s) for s in specs}
    taken = [labels[s] for s in specs]
    return {s: (label if taken.count(label) == 1 else s) for s, label in labels.items()}


def format_count(n: int) -> str:
    for suffix, unit in (("M", 10**6), ("k", 10**3)):
        if n >= unit:
            v = n / unit
            return f"{v:.0f}{suffix}" if abs(v - round(v)) < 1e-9 else f"{v:g}{suffix}"
    return str(n)


def _value(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
        return float(value)  # 1e-5: YAML 1.1 reads an exponent without a dot as a string
    return value


def _options(text: str, spec: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for i, item in enumerate(text.split(",")):
        key, eq, val = item.partition("=")
        if not eq and i == 0 and ("/" in item or "\\" in item or "." in item):  # a path, then options: name it too
            head = spec[:len(spec) - len(text)]
            raise UserError(f"malformed option {item!r} in {spec!r}: with options, name the path as one: "
                            f"{head}source={text}")
        if not eq or not key.strip():
            raise UserError(f"malformed option {item!r} in {spec!r}: expected key=value")
        if not val.strip():
            raise UserError(f"option {key.strip()}= has no value in {spec!r}: give one ({key.strip()}=VALUE) or "
                            "leave the option out")
        options[key.strip()] = _value(val.strip())
    return options


def parse_spec(spec: str, registry: Registry) -> tuple[Any, str, dict[str, Any]]:
    """``name``, ``name:key=value,key=value``, ``name:PATH`` (a task's source), ``prefix:NAME`` and
    ``prefix:NAME:key=value,...`` (``hf:llama``), ``module:Class`` or ``path/file.py:Class``.
    Returns (class, label, options)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty {registry.kind} name")
    head, sep, rest = spec.partition(":")
    if sep and head in registry.prefixes():  # prefix:NAME[:key=value,...], e.g. hf:llama:num_key_value_heads=1
        name, sep, rest = rest.partition(":")
        return registry.get(f"{head}:{name}"), spec, _options(rest, spec) if sep else {}
    if sep and head in registry.names():
        options: dict[str, Any] = {}
        if rest:
            if "=" in rest:
                options = _options(rest, spec)
            else:
                options["source"] = rest
        return registry.get(head), spec, options
    cls = registry.get(spec)
    label = spec if spec in registry.names() else getattr(cls, "__name__", spec)
    return cls, label, {}
