"""What an overload run measured, per band and per tenant, from each request's outcome.

An outcome is a request's tenant and objective, when it arrived, whether it completed, its HTTP status when it
did not, its TTFT and how long it waited in the router before an engine got it. From those:

- per band: requests, completed, TTFT p50 / p90 of the completed ones, queue wait p50 / p90 / max, refusals by
  status (429: over a limit or shed; 503: TTL expired; other: errors), `lost` (neither completed nor answered
  with an error: must be 0);
- `goodput_rps`: requests completed within the offered window (arrivals from 0 to `window_s`), per second of it;
  `slo_goodput_rps`: those whose TTFT met `slo_ttft_s`;
- fairness across the standard band's tenants (equal weight): Jain's index of the completed requests per tenant
  normalised by each tenant's max-min fair share of what the band completed (`jain_fair_share`: 1 is max-min fair,
  whatever the tenants asked for), and of the raw completed counts (`jain_raw`: 1 when all got the same).

Numbers are rounded to 6 decimals (`DIGITS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvroute.bench.overload.scenario import CRITICAL, STANDARD
from kvroute.bench.quality.metrics import DIGITS, percentile


@dataclass(frozen=True)
class Outcome:
    tenant: str
    objective: str
    completed: bool
    status: int | None  # the error status of a request that did not complete (None: no answer at all)
    ttft: float | None
    wait: float | None  # time in the router's queue before dispatch (None: never dispatched)
    finished_at: float | None = None  # when it completed, seconds from the start of the run


def _r(value: float) -> float | None:
    return None if math.isnan(value) else round(value, DIGITS)


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n sum x^2); 1 when all are equal, 1/n when one gets everything."""
    squares = sum(v * v for v in values)
    return (sum(values) ** 2) / (len(values) * squares) if squares else math.nan


def max_min_shares(demands: Sequence[float], total: float) -> list[float]:
    """Max-min fair allocation of `total` among `demands` (water filling)."""
    shares = [0.0] * len(demands)
    left = sorted(range(len(demands)), key=lambda i: demands[i])
    remaining = total
    while left:
        each = remaining / len(left)
        i = left[0]
        if demands[i] <= each:
            shares[i] = demands[i]
            remaining -= demands[i]
            left.pop(0)
        else:
            for j in left:
                shares[j] = each
            break
    return shares


def band(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    ttft = [o.ttft for o in outcomes if o.completed and o.ttft is not None]
    waits = [o.wait for o in outcomes if o.wait is not None]
    refused: dict[str, int] = {}
    for o in outcomes:
        if not o.completed and o.status is not None:
            key = str(o.status) if o.status in (429, 503, 504) else "other"
            refused[key] = refused.get(key, 0) + 1
    return {
        "requests": len(outcomes),
        "completed": sum(o.completed for o in outcomes),
        "ttft_p50_s": _r(percentile(ttft, 0.5)),
        "ttft_p90_s": _r(percentile(ttft, 0.9)),
        "wait_p50_s": _r(percentile(waits, 0.5)),
        "wait_p90_s": _r(percentile(waits, 0.9)),
        "wait_max_s": _r(max(waits) if waits else math.nan),
        "refused": dict(sorted(refused.items())),
        "lost": sum(1 for o in outcomes if not o.completed and o.status is None),
    }


def summarise(outcomes: Sequence[Outcome], window_s: float, slo_ttft_s: float) -> dict[str, Any]:
    bands = {name: band([o for o in outcomes if o.objective == name]) for name in (CRITICAL, STANDARD)}
    standard = [o for o in outcomes if o.objective == STANDARD]
    tenants = sorted({o.tenant for o in standard})
    offered = [sum(1 for o in standard if o.tenant == t) for t in tenants]
    served = [sum(1 for o in standard if o.tenant == t and o.completed) for t in tenants]
    fair = max_min_shares(offered, sum(served))
    completed = [o for o in outcomes if o.completed and o.finished_at is not None and o.finished_at <= window_s]
    return {
        "bands": bands,
        "tenants": {t: {"offered": n, "completed": s} for t, n, s in zip(tenants, offered, served, strict=True)},
        "jain_fair_share": _r(jain([s / f for s, f in zip(served, fair, strict=True) if f > 0])),
        "jain_raw": _r(jain(served)),
        "goodput_rps": _r(len(completed) / window_s),
        "slo_goodput_rps": _r(sum(1 for o in completed if o.ttft is not None and o.ttft <= slo_ttft_s) / window_s),
        "lost": sum(b["lost"] for b in bands.values()),
    }
