"""The allowed range of every numeric setting, in one place: the CLI checks them when it parses its options
(``commands/_args.py`` makes argparse types of them) and the library's dataclasses in ``__post_init__``
(``features/options.py``, ``features/modes.py``, ``workflows/training/configs.py``), so ``--min-tissue 25``,
``nan`` or ``inf`` is refused before any work.

Plain Python (no numpy, no torch): building the CLI stays fast."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from .data.augment_config import VIEW_COUNTS


def _show(number: float) -> str:
    """A bound as written: ``4294967295``, ``0.05``."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


@dataclass(frozen=True)
class Range:
    """Finite numbers (integers with ``integer``) from ``low`` to ``high`` (None: unbounded), each end included
    unless ``low_open`` / ``high_open``; ``values``, when given, lists the only numbers allowed."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False
    high_open: bool = False
    unit: str = ""
    values: tuple[int, ...] = ()

    def bounds(self) -> str:
        """The rule in words: ``> 0``, ``≥ 1``, ``in [0, 1)``, ``one of 1, 4, 8``."""
        unit = f" {self.unit}" if self.unit else ""
        if self.values:
            return "one of " + ", ".join(_show(v) for v in self.values) + unit
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_show(self.low)}, {_show(self.high)}{right}{unit}"
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'} {_show(self.low)}{unit}"
        if self.high is not None:
            return f"{'<' if self.high_open else '≤'} {_show(self.high)}{unit}"
        return "any value"

    def __str__(self) -> str:
        return f"{self.bounds()} ({'an integer' if self.integer else 'a finite number'})"

    def contains(self, value: Any) -> bool:
        """Whether ``value`` (a number, not a bool) obeys the rule."""
        kind = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
            return False
        if self.values:
            return value in self.values
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return low_ok and high_ok

    def check(self, name: str, value: Any) -> None:
        """``ValueError`` (``NAME must be RULE, got VALUE``) unless ``value`` obeys the rule."""
        if not self.contains(value):
            raise ValueError(f"{name} must be {self}, got {value!r}")

    def parse(self, text: str) -> int | float:
        """The number ``text`` spells, when it obeys the rule; ``ValueError`` saying why otherwise."""
        try:
            value: int | float = int(text) if self.integer else float(text)
        except ValueError:
            raise ValueError(f"must be {self}, got {text!r}") from None
        if not self.contains(value):
            raise ValueError(f"must be {self}, got {text!r}")
        return value


POSITIVE_INT = Range(1, integer=True)  # counts of things that must exist: epochs, batch sizes, threads, pixels
COUNT = Range(0, integer=True)  # counts that may be zero: overlap px, warm-up epochs, folds (0: no folds)
POSITIVE = Range(0, low_open=True)  # learning rates, target resolutions, norms
NON_NEGATIVE = Range(0)  # strengths and weights where 0 switches something off
FRACTION = Range(0, 1)  # a share of something, or a probability: tissue fraction, test fraction, threshold
VAL_FRACTION = Range(0, 1, high_open=True)  # the validation part: 1 would leave nothing to train on
DECAY = Range(0, 1, low_open=True, high_open=True)  # a moving average's decay per step
RATE = Range(0, 1, high_open=True)  # dropout and drop-path rates
MPP = Range(0.05, 20.0, unit="µm/px")  # a microscope's microns per pixel (slide/base.py's MPP_RANGE)
SEED = Range(0, 2**32 - 1, integer=True)  # what numpy's and torch's generators both take
VIEWS = Range(integer=True, values=VIEW_COUNTS)  # a tile and its rotations (and mirror images)
PORT = Range(0, 65535, integer=True)  # a TCP port (0: one the system picks)
TOPK = Range(0, 64, integer=True)  # tiles in the slide model's max-evidence branch (0: off)
SPECIFICITY = Range(0, 1, low_open=True)  # a target specificity: the share of normal slides called normal


def check_fields(config: Any, **rules: Range) -> None:
    """Check the fields of dataclass ``config`` named in ``rules`` (``ValueError`` naming the class and the field);
    a field whose default is None may be None."""
    optional = {f.name for f in dataclasses.fields(config) if f.default is None}
    for name, rule in rules.items():
        value = getattr(config, name)
        if value is None and name in optional:
            continue
        rule.check(f"{type(config).__name__}.{name}", value)
