"""One searchable value: where it may go, how it is drawn, how it is nudged around a known good value.

A range is numeric (`low`..`high`, log-uniform when `log`, rounded when `integer`, and for scorer weights with
a `zero` share of draws that drop the scorer) or a list of `choices`. Draws take an injected `random.Random`, so
a trial's values depend only on the generator it is given.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

# Significant digits kept of a drawn float: configurations stay readable and journal keys stable.
DIGITS = 3


@dataclass(frozen=True)
class Range:
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    zero: float = 0.0  # share of draws that give exactly 0 (a weight of 0 drops the scorer's influence)
    choices: tuple[Any, ...] = ()

    def check(self) -> str | None:
        """What is wrong with this range, or None."""
        if self.choices:
            return None
        if self.low > self.high:
            return f"low ({self.low}) is above high ({self.high})"
        if self.log and self.low <= 0:
            return f"a log range needs low > 0 (got {self.low})"
        if not 0 <= self.zero < 1:
            return f"zero must be in [0, 1) (got {self.zero})"
        return None

    def including(self, value: Any) -> Range:
        """This range widened to contain `value` (a base value outside a table's range stays reachable)."""
        if self.choices:
            return self if value in self.choices else Range(choices=(*self.choices, value))
        if not isinstance(value, int | float) or (value == 0 and (self.log or self.zero)):
            return self
        low, high = min(self.low, float(value)), max(self.high, float(value))
        return Range(low, high, self.log, self.integer, self.zero)

    def draw(self, rng: random.Random) -> Any:
        """A value anywhere in the range."""
        if self.choices:
            return self.choices[rng.randrange(len(self.choices))]
        if self.zero and rng.random() < self.zero:
            return 0
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return self._tidy(value)

    def nudge(self, rng: random.Random, value: Any) -> Any:
        """A value near `value`: within a factor of 2 on a log range, a quarter of the width on a linear one, a
        neighbouring choice; a zero weight comes back at the bottom of its range."""
        if self.choices:
            if value not in self.choices:
                return self.draw(rng)
            i = self.choices.index(value) + rng.choice((-1, 1))
            return self.choices[min(max(i, 0), len(self.choices) - 1)]
        if self.log:
            if not value:
                return self._tidy(self.low)
            moved = value * math.exp(rng.uniform(-math.log(2), math.log(2)))
        else:
            moved = value + rng.uniform(-0.25, 0.25) * (self.high - self.low)
        return self._tidy(min(max(moved, self.low), self.high))

    def _tidy(self, value: float) -> int | float:
        if self.integer:
            return round(value)
        if value == 0:
            return 0.0
        return round(value, DIGITS - 1 - math.floor(math.log10(abs(value))))


def weight_range(base: float) -> Range:
    """A scorer weight: log-uniform from a quarter to four times the base weight (1/4..4 when the base is 0),
    one draw in six dropping the scorer."""
    if base <= 0:
        return Range(0.25, 4.0, log=True, zero=1 / 6)
    return Range(base / 4, base * 4, log=True, zero=1 / 6)
