"""Declarative checks for config values: type, range, choice, with one-line errors.

Every config group describes its keys as a dict of `Field`s; `check_fields`
validates a mapping against it, fills defaults, rejects unknown keys (with
the closest known key as a hint) and returns plain Python values. Pure
Python: nothing here imports tensorflow, keras or mlflow.

Example:
    >>> spec = {"units": Field(positive_int), "use_bias": Field(boolean, True)}
    >>> check_fields({"units": 10}, spec, "model.layers.logits")
    {'units': 10, 'use_bias': True}
    >>> check_fields({"unit": 10}, spec, "model.layers.logits")
    Traceback (most recent call last):
    ...
    cnnlab.errors.ConfigError: model.layers.logits.unit: unknown key; did you mean 'units'? (known: units, use_bias)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from cnnlab.errors import ConfigError

REQUIRED = object()
Check = Callable[[Any, str], Any]


@dataclass(frozen=True)
class Field:
    check: Check
    default: Any = REQUIRED


def show(value: Any) -> str:
    """Render a bad value the way the user would have typed it."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def closest(word: str, options) -> str:
    """' did you mean X?' for the closest option, or '' when none is close."""
    match = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def check_fields(values: Any, spec: Mapping[str, Field], path: str) -> dict:
    """Validate `values` (a mapping) against `spec`; return a filled-in dict."""
    if not isinstance(values, Mapping):
        raise ConfigError(path, f"expected a mapping of keys to values, got {show(values)}")
    for key in values:
        if key not in spec:
            known = ", ".join(spec) or "none: it takes no arguments"
            raise ConfigError(f"{path}.{key}", f"unknown key{closest(key, spec)} (known: {known})")
    out = {}
    for key, field in spec.items():
        key_path = f"{path}.{key}"
        if key in values:
            out[key] = field.check(values[key], key_path)
        elif field.default is REQUIRED:
            raise ConfigError(key_path, "is required but missing")
        else:
            out[key] = field.default
    return out


# --- value checks: each takes (value, path) and returns the normalised value ---


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(v: Any, path: str) -> int:
    if not _is_int(v) or v <= 0:
        raise ConfigError(path, f"expected a positive integer, got {show(v)}")
    return v


def non_negative_int(v: Any, path: str) -> int:
    if not _is_int(v) or v < 0:
        raise ConfigError(path, f"expected an integer >= 0, got {show(v)}")
    return v


def integer(v: Any, path: str) -> int:
    if not _is_int(v):
        raise ConfigError(path, f"expected an integer, got {show(v)}")
    return v


def number(v: Any, path: str) -> float:
    if not _is_number(v):
        raise ConfigError(path, f"expected a finite number, got {show(v)}")
    return float(v)


def positive_number(v: Any, path: str) -> float:
    if not _is_number(v) or v <= 0:
        raise ConfigError(path, f"expected a number > 0, got {show(v)}")
    return float(v)


def non_negative_number(v: Any, path: str) -> float:
    if not _is_number(v) or v < 0:
        raise ConfigError(path, f"expected a number >= 0, got {show(v)}")
    return float(v)


def fraction(v: Any, path: str) -> float:
    """A probability-like rate in [0, 1), e.g. a dropout rate."""
    if not _is_number(v) or not 0 <= v < 1:
        raise ConfigError(path, f"expected a number in [0, 1), got {show(v)}")
    return float(v)


def unit_interval_open(v: Any, path: str) -> float:
    """A decay rate in (0, 1), e.g. Adam's beta_1."""
    if not _is_number(v) or not 0 < v < 1:
        raise ConfigError(path, f"expected a number in (0, 1), got {show(v)}")
    return float(v)


def boolean(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(path, f"expected true or false, got {show(v)}")
    return v


def string(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(path, f"expected a non-empty string, got {show(v)}")
    return v


def optional(check: Check) -> Check:
    """Accept null (None) as well as whatever `check` accepts."""

    def _check(v: Any, path: str):
        return None if v is None else check(v, path)

    return _check


def choice(*options: str) -> Check:
    """One of a fixed set of strings (case-sensitive, as Keras is)."""

    def _check(v: Any, path: str) -> str:
        if v not in options or not isinstance(v, str):
            listed = " | ".join(options)
            raise ConfigError(path, f"{show(v)} is not one of {listed}{closest(v, options)}")
        return v

    return _check


def positive_pair(v: Any, path: str) -> tuple[int, int]:
    """An int or [h, w] of positive ints, as Keras takes kernel sizes and strides."""
    pair = [v, v] if _is_int(v) else v
    if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(_is_int(x) and x > 0 for x in pair):
        raise ConfigError(path, f"expected a positive integer or [height, width] of them, got {show(v)}")
    return int(pair[0]), int(pair[1])


def shape(v: Any, path: str) -> tuple[int, ...]:
    """An input shape without the batch axis, e.g. [28, 28, 1]."""
    if not isinstance(v, (list, tuple)) or not v or not all(_is_int(x) and x > 0 for x in v):
        raise ConfigError(path, f"expected a list of positive integers such as [28, 28, 1], got {show(v)}")
    return tuple(int(x) for x in v)


# --- typed groups: each key declared once, its type, rule and default together ---


def rule(check: Check, default: Any = REQUIRED):
    """A field of a config group's frozen dataclass, with the check its value must pass.

    Example:
        >>> @dataclass(frozen=True)
        ... class Demo:
        ...     units: int = rule(positive_int)
        ...     use_bias: bool = rule(boolean, True)
        >>> check_group(Demo, {"units": 10}, "model.layers.logits")
        Demo(units=10, use_bias=True)
        >>> check_group(Demo, {"units": 0}, "model.layers.logits")
        Traceback (most recent call last):
        ...
        cnnlab.errors.ConfigError: model.layers.logits.units: expected a positive integer, got 0
    """
    if default is REQUIRED:
        return dataclasses.field(metadata={"check": check})
    return dataclasses.field(default=default, metadata={"check": check})


def rules(cls) -> dict[str, Field]:
    """The `Field`s of a dataclass declared with `rule`, in declaration order."""
    return {f.name: Field(f.metadata["check"], REQUIRED if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(cls)}


def check_group(cls, values: Any, path: str):
    """Validate a group's mapping against its dataclass's rules; the frozen dataclass, defaults filled in."""
    return cls(**check_fields(values, rules(cls), path))
