"""How a configuration compares with the base configuration over a set of cases (lower is better; base = 1).

    ratio_c      = ttft_p90(candidate, c) / ttft_p90(base, c)                     per case c
    latency      = exp(mean_c log ratio_c)                                         geometric mean
    throughput   = exp(mean_c log(output_tok_s(candidate, c) / output_tok_s(base, c)))
    objective    = latency * (1 + PENALTY * max(0, (1 - TOLERANCE) - throughput))

The geometric mean weighs a case where TTFT halves as much as one where it doubles, whatever the cases' absolute
latencies, so one slow workload does not drown the others. The penalty keeps the search from trading output
throughput for first-token latency (e.g. by starving decodes) beyond a few percent of noise. A run that left
requests unfinished, or finished none, counts as `WORST` times the base's TTFT.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

TOLERANCE = 0.03  # throughput drop that is noise, not a trade
PENALTY = 10.0  # objective multiplier per unit of throughput lost beyond the tolerance
WORST = 10.0
_FLOOR = 1e-6  # seconds: keeps ratios finite when a base TTFT rounds to 0

Metrics = Mapping[str, Any]


def _ttft_ratio(candidate: Metrics, base: Metrics, key: str) -> float:
    value, reference = candidate.get(key), base.get(key)
    if candidate.get("unfinished") or value is None:
        return WORST
    if reference is None:
        return 1.0
    return float(max(value, _FLOOR) / max(reference, _FLOOR))


def _throughput_ratio(candidate: Metrics, base: Metrics) -> float:
    value, reference = candidate.get("output_tokens_per_s") or 0.0, base.get("output_tokens_per_s") or 0.0
    if reference <= 0:
        return 1.0
    return max(value, _FLOOR) / reference


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def compare(candidate: Sequence[Metrics], base: Sequence[Metrics], key: str = "ttft_p90_s") -> dict[str, float]:
    """The candidate's runs against the base's runs on the same cases (in the same order)."""
    latency = geomean([_ttft_ratio(c, b, key) for c, b in zip(candidate, base, strict=True)])
    throughput = geomean([_throughput_ratio(c, b) for c, b in zip(candidate, base, strict=True)])
    objective = latency * (1.0 + PENALTY * max(0.0, (1.0 - TOLERANCE) - throughput))
    return {"objective": objective, "ttft_ratio": latency, "throughput_ratio": throughput}


def objective(candidate: Sequence[Metrics], base: Sequence[Metrics]) -> float:
    return compare(candidate, base)["objective"]
