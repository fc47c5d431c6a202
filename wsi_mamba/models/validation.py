"""Type and range checks for configuration fields read from files (a tampered JSON must fail with one line
before anything is built, never allocate 10^9-wide layers or loop over 10^6 blocks)."""

from __future__ import annotations

import math
import numbers


def check_int(owner: str, name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in [low, high]; ``ValueError`` naming ``owner.name`` otherwise (bools, strings and
    non-integral floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{owner}: {name} must be an integer, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{owner}: {name} must be in [{low}, {high}], got {value}")
    return value


def check_float(
    owner: str, name: str, value: object, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` as a finite float in the interval; ``ValueError`` naming ``owner.name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be a number, got {value!r}")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or below or above:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{owner}: {name} must be a finite number in {interval}, got {value}")
    return value


def check_bool(owner: str, name: str, value: object) -> bool:
    """``value`` if it is a bool; ``ValueError`` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be true or false, got {value!r}")
    return value
