"""What a config field declares beside itself: its valid range, and whether a resumed run may change it.

Ranges. A field reads ``epochs: int = field(default=30, metadata=at_least(0))``; the
config reader (``embdistill.config.validate``) checks every field carrying a range, so
a rule is written once, where the field is defined, and a bad value is refused when
the config is read, before a run directory exists. On a list field the range holds
for every item; ``None`` (an optional field left unset) is always accepted.

What may change. ``field(default=2, metadata=at_least(0) | may_change("resume", "reuse"))``:
the key may differ between a run and its resumption (``resume``), or between a finished
run and the config a benchmark would reuse it for (``reuse``), because it changes where
things are, how fast they run or what is reported, not what is computed
(``config/resume.py`` collects these keys).

The helpers return plain dicts, so a field combines them with ``|``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

RANGE = "range"  # the key of a Range (or a CountOrFraction) in a dataclass field's metadata
MAY_CHANGE = "may_change"  # the key of the comparisons (resume, reuse) a field's value may differ in
CHANGES = ("resume", "reuse")

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


def at_least(low: float) -> dict[str, Range]:
    """Field metadata: ``low`` or more."""
    return {RANGE: Range(low)}


def above(low: float) -> dict[str, Range]:
    """Field metadata: more than ``low`` (a learning rate of 0 trains nothing)."""
    return {RANGE: Range(low, low_open=True)}


def between(low: float, high: float, *, high_open: bool = False) -> dict[str, Range]:
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


def count_or_fraction() -> dict[str, CountOrFraction]:
    """Field metadata: an int count ``>= 0``, or a float fraction in (0, 1)."""
    return {RANGE: CountOrFraction()}


def may_change(*on: str) -> dict[str, frozenset[str]]:
    """Field metadata: the value may differ between a run and its resumption (``"resume"``) and/or between a
    finished run and a config that would reuse it (``"reuse"``, benchmarks)."""
    unknown = [o for o in on if o not in CHANGES]
    if unknown or not on:
        raise ValueError(f"may_change takes some of {CHANGES}, got {on}")
    return {MAY_CHANGE: frozenset(on)}
