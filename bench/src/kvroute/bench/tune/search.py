"""The search: seeded random candidates (`trials`), culled by successive halving over the training cases.

Why this and not a model-based optimiser (TPE, Gaussian processes): the space is small (a weight per scorer and a
few parameters), the budget is tens of trials, and every evaluation is a deterministic simulation whose noise is
the workload's own randomness. At that scale random search is within a small margin of model-based methods
while being trivially reproducible: candidates are a pure function of `--seed` and their index, never of the
order in which results come back, so the answer is the same for any `--jobs` and after a resumed interruption,
and it needs no dependency. What matters more is not wasting simulations on bad candidates, which successive
halving does:

    rung sizes   k_1 < k_2 < ... < k_R = n      k_r = ceil(n / eta^(R-r)), the first k_r training cases
    rung r       every surviving candidate is scored on the first k_r cases
    promotion    the best ceil(m / eta) of the m survivors (ties: lower trial index) go on to rung r + 1

With three training cases and eta = 3, every candidate runs on one case and the best third on all three. The
base configuration (trial 0) is always kept, since every score is relative to it, and it wins ties: a
candidate must be strictly better on the training cases to replace it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ETA = 3

# Scores of the given trial indices on the first k training cases (lower is better).
Score = Callable[[Sequence[int], int], dict[int, float]]


@dataclass
class Rung:
    cases: int
    scores: dict[int, float]
    promoted: list[int] = field(default_factory=list)


@dataclass
class Outcome:
    winner: int
    rungs: list[Rung]

    @property
    def final(self) -> dict[int, float]:
        """Scores on all training cases of the candidates that reached the last rung."""
        return self.rungs[-1].scores


def rung_sizes(cases: int, eta: int = ETA) -> list[int]:
    """Cases per rung, the last being all of them: e.g. 9 -> [1, 3, 9], 3 -> [1, 3], 2 -> [1, 2], 1 -> [1]."""
    if cases < 1:
        raise ValueError("successive halving needs at least one case")
    sizes = [cases]
    while sizes[0] > 1:
        sizes.insert(0, math.ceil(sizes[0] / eta))
    return sizes


def successive_halving(
    candidates: Sequence[int], cases: int, score: Score, *, eta: int = ETA, keep: Sequence[int] = (0,)
) -> Outcome:
    """Runs the rungs over `candidates` (trial indices) and returns the best on all cases."""
    alive = sorted(set(candidates) | set(keep))
    rungs: list[Rung] = []
    sizes = rung_sizes(cases, eta)
    for r, size in enumerate(sizes):
        scores = score(alive, size)
        rung = Rung(size, {i: scores[i] for i in alive})
        rungs.append(rung)
        if r + 1 < len(sizes):
            ranked = sorted(alive, key=lambda i: (scores[i], i))
            rung.promoted = sorted(set(ranked[: math.ceil(len(ranked) / eta)]) | set(keep))
            alive = rung.promoted
    final = rungs[-1].scores
    winner = min(final, key=lambda i: (final[i], i))
    return Outcome(winner, rungs)
