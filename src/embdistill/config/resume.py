"""What a resumed run (or a finished run a benchmark reuses) may change, and how two configs differ.

A resumed run must have its checkpoint's config up to the keys whose field declares
``may_change("resume")`` (sections.py, fields.py), and a finished run is reused only for a
config equal to its own up to the keys declaring ``may_change("reuse")``: they change
where things are, how fast they run and what is reported, not what is computed.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from embdistill.config.fields import MAY_CHANGE
from embdistill.config.sections import ExperimentConfig

__all__ = ["RESUME_MAY_CHANGE", "REUSE_MAY_CHANGE", "config_differences", "may_change_keys", "may_change_for"]


def may_change_keys(on: str, section: type = ExperimentConfig, prefix: str = "") -> frozenset[str]:
    """The dotted keys whose field declares ``may_change(on, ...)``, in ``section`` and its nested sections."""
    hints = typing.get_type_hints(section)
    keys: set[str] = set()
    for f in dataclasses.fields(section):
        key = f"{prefix}{f.name}"
        if on in f.metadata.get(MAY_CHANGE, ()):
            keys.add(key)
        for option in typing.get_args(hints[f.name]) or (hints[f.name],):  # a section, or an optional one
            if dataclasses.is_dataclass(option):
                keys |= may_change_keys(on, option, f"{key}.")
    return frozenset(keys)


# A moved dataset (data.root) may be resumed; a finished run is reused only on the same images.
RESUME_MAY_CHANGE = may_change_keys("resume")
REUSE_MAY_CHANGE = may_change_keys("reuse")


def may_change_for(cfg: ExperimentConfig, keys: frozenset[str]) -> frozenset[str]:
    """With ``train.select: best`` the evaluations are the candidates: how often they come changes the result."""
    return keys - {"eval.every_epochs"} if cfg.train.select == "best" else keys


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       may_change: frozenset[str] = RESUME_MAY_CHANGE) -> list[str]:
    """``key: saved -> current`` for every key that matters to the result (not in ``may_change``)."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if k not in may_change and a.get(k) != b.get(k)]


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, dict) or not values:
        return {prefix: values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
