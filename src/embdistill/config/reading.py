"""Reading a config: YAML files with their ``_base_`` chain, ``key.sub=value`` overrides, and the checked result.

Every run is described by one ``ExperimentConfig``. YAML files may name a ``_base_``
file (relative to themselves) whose values they override; ``key.sub=value``
arguments override both. :func:`from_dict` builds the sections (typecheck.py) and
checks everything else (rules.py) before any work starts, so a typo never silently
falls back to a default or surfaces as a traceback later.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from embdistill.config.errors import ConfigError
from embdistill.config.rules import validate
from embdistill.config.sections import ExperimentConfig
from embdistill.config.typecheck import build

__all__ = ["apply_overrides", "from_dict", "load_config", "read_yaml", "to_dict"]


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, dicts merged key by key, except that a file choosing another loss or
    backbone (``metric_loss``, ``backbone``...) does not inherit its ``*_args``: they belong to the old choice."""
    merged = dict(base)
    for key, value in update.items():
        if key in base and f"{key}_args" in base and value != base[key]:
            merged[f"{key}_args"] = {}
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict, with its ``_base_`` chain merged in."""
    path = Path(path)
    if path.resolve() in _chain:
        raise ConfigError(f"_base_ chain loops: {' -> '.join(map(str, _chain))} -> {path.resolve()}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    base = values.pop("_base_", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: _base_ must be a file name, got {base!r}")
        values = _merge(read_yaml(path.parent / base, (*_chain, path.resolve())), values)
    return values


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings; each value is parsed as YAML (``1e-3``, ``true``, ``[1, 2]``)."""
    values = dict(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[leaf] = yaml.safe_load(raw)
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    values = read_yaml(path) if path else {}
    return from_dict(apply_overrides(values, overrides or []))


def from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Build and check a config (types, choices, registry names); raises ConfigError naming the key."""
    cfg = build(ExperimentConfig, values)
    validate(cfg)
    return cfg


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
