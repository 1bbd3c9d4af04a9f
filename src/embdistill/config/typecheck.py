"""A value read from YAML checked against a config field's annotation, and a section built from a mapping.

``Literal`` choices, unions (``int | None``), nested sections, lists and dicts, floats
written as ints or as ``1e-4``: each mismatch is one :class:`ConfigError` naming the key.
The range, registry and cross-field checks come after, in rules.py.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from embdistill.config.errors import ConfigError

__all__ = ["build", "coerce", "type_name"]


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return ", ".join(repr(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and build nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if any(value == c and type(value) is type(c) for c in choices):  # True is not 1
            return value
        raise ConfigError(f"{key}: expected one of {type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors: dict[Any, ConfigError] = {}
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, key)
            except ConfigError as err:
                errors[option] = err
        # A mapping for an optional section: the section's own error names the bad nested key.
        sections = [o for o in errors if dataclasses.is_dataclass(o)]
        if isinstance(value, dict) and len(sections) == 1:
            raise errors[sections[0]]
        names = " or ".join("None" if o is type(None) else type_name(o) for o in options)
        raise ConfigError(f"{key}: expected {names}, got {value!r} ({type(value).__name__})")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key '{where}{unknown[0]}'; valid keys here: {names}")
    kwargs = {k: coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err
