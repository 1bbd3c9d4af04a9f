"""Valid ranges of numeric config fields, declared beside the field and checked by one generic walk.

A field reads ``epochs: int = field(default=30, metadata=at_least(0))``; the config
reader (``embdistill.config.validate``) checks every field carrying a range, so a
rule is written once, where the field is defined, and a bad value is refused when
the config is read, before a run directory exists. On a list field the range holds
for every item; ``None`` (an optional field left unset) is always accepted.

This module imports nothing from embdistill: ``models/embedder.py`` declares ranges
too, and ``config.py`` imports it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

RANGE = "range"  # the key of a Range (or a CountOrFraction) in a dataclass field's metadata

SEED_MAX = 2**32 - 1  # numpy's legacy np.random.seed takes no more


@dataclass(frozen=True)
class Range:
    """``low`` to ``high`` (``None``: unbounded), each end included unless it is open. NaN and ±inf are never in."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


def at_least(low: float) -> Mapping[str, Range]:
    """Field metadata: ``low`` or more."""
    return {RANGE: Range(low)}


def above(low: float) -> Mapping[str, Range]:
    """Field metadata: more than ``low`` (a learning rate of 0 trains nothing)."""
    return {RANGE: Range(low, low_open=True)}


def between(low: float, high: float, *, high_open: bool = False) -> Mapping[str, Range]:
    """Field metadata: from ``low`` to ``high``, both included unless ``high_open``."""
    return {RANGE: Range(low, high, high_open=high_open)}


@dataclass(frozen=True)
class CountOrFraction:
    """A count (an int in ``count``) or a fraction of the whole (a float in ``fraction``).

    For a field typed ``int | float`` whose whole is only known when the data is read
    (``data.validation_classes``): ``2`` means two, ``0.25`` a quarter. A float outside
    (0, 1), ``1.0`` or ``3.0`` included, is refused rather than guessed at.
    """

    count: Range = Range(0)
    fraction: Range = Range(0, 1, low_open=True, high_open=True)

    def of(self, kind: type) -> Range:
        """The range that values of ``kind`` (int or float) must lie in."""
        return self.count if kind is int else self.fraction

    def __contains__(self, value: float) -> bool:
        return value in self.of(int if isinstance(value, int) else float)

    def __str__(self) -> str:
        return f"{self.count} (a count) or {self.fraction} (a fraction)"


def count_or_fraction() -> Mapping[str, CountOrFraction]:
    """Field metadata: an int count ``>= 0``, or a float fraction in (0, 1)."""
    return {RANGE: CountOrFraction()}
