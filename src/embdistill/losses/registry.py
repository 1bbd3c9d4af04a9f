"""Building a loss by its registered name, shared by the metric and the distillation registries.

A typo in a loss name or argument is an error that lists the valid choices
instead of a TypeError deep inside a constructor.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def check_registered(kind: str, registry: Mapping[str, Any], name: str) -> None:
    """Raise a ValueError naming the valid choices when ``name`` is not in ``registry``."""
    if name not in registry:
        raise ValueError(f"unknown {kind} loss {name!r}; valid: {', '.join(sorted(registry))}")


def build_registered(kind: str, registry: Mapping[str, Callable[..., T]], name: str, kwargs: dict[str, Any]) -> T:
    """Look ``name`` up and call it with ``kwargs``, turning typos into ValueErrors that list the choices."""
    check_registered(kind, registry, name)
    factory = registry[name]
    params = {
        p.name: p
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(
            f"{kind} loss {name!r} got unknown argument(s) {', '.join(unknown)}; "
            f"valid: {', '.join(params) or '(none)'}"
        )
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise ValueError(f"{kind} loss {name!r} needs argument(s) {', '.join(missing)}")
    return factory(**kwargs)
