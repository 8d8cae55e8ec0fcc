"""What one (workload, policy) run measured, as a flat dict of rounded numbers (the JSON of the report).

- `ttft_*_s`: arrival to first token (p50 / p90 / p99 / mean); percentiles are nearest-rank;
- `e2e_*_s`: arrival to last token; `tpot_p50_s`: median time per output token after the first;
- `output_tokens_per_s`: output tokens / simulated duration (first arrival at 0 to last completion);
- `prefix_hit_rate`: prompt tokens served from the cache of the engine that computed the prompt (the prefill
  engine of a disaggregated request) / all prompt tokens;
- `engine_requests`: requests per engine (a disaggregated request counts on its prefill and its decode
  engine); `load_imbalance`: the busiest engine's requests / the mean, per role pool, the worst pool;
- `preemptions`: KV-cache preemptions over all engines; `disaggregated`: share of requests prefilled apart.

Numbers are rounded (6 decimals) so that the JSON is byte-identical between runs of the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from kvroute.bench.quality.workloads import Fleet
from kvroute.simulator.des.harness import SimulationResult

DIGITS = 6


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of `values` (q in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def _r(value: float) -> float | None:
    return None if math.isnan(value) else round(value, DIGITS)


def summarise(result: SimulationResult, fleet: Fleet) -> dict[str, Any]:
    records = result.records
    ttft = [r.ttft for r in records if r.ttft is not None]
    e2e = [r.e2e for r in records if r.e2e is not None]
    tpot = [r.tpot for r in records if r.tpot is not None]
    prompt = sum(r.prompt_tokens for r in records)
    hits = sum(r.prefill_cached_tokens if r.prefill_engine is not None else r.cached_tokens for r in records)
    per_engine = [0] * len(fleet.roles)
    disaggregated = 0
    for r in records:
        if r.engine < 0:
            continue  # refused by the router: it never reached an engine
        per_engine[r.engine] += 1
        if r.prefill_engine is not None:
            per_engine[r.prefill_engine] += 1
            disaggregated += 1
    imbalance = 0.0
    for role in sorted(set(fleet.roles)):
        counts = [per_engine[i] for i in fleet.indices(role)]
        if sum(counts):
            imbalance = max(imbalance, max(counts) * len(counts) / sum(counts))
    duration = result.duration
    return {
        "requests": len(records),
        "unfinished": result.unfinished,
        "duration_s": _r(duration),
        "ttft_p50_s": _r(percentile(ttft, 0.5)),
        "ttft_p90_s": _r(percentile(ttft, 0.9)),
        "ttft_p99_s": _r(percentile(ttft, 0.99)),
        "ttft_mean_s": _r(sum(ttft) / len(ttft) if ttft else math.nan),
        "e2e_p50_s": _r(percentile(e2e, 0.5)),
        "e2e_p90_s": _r(percentile(e2e, 0.9)),
        "e2e_p99_s": _r(percentile(e2e, 0.99)),
        "e2e_mean_s": _r(sum(e2e) / len(e2e) if e2e else math.nan),
        "tpot_p50_s": _r(percentile(tpot, 0.5)),
        "output_tokens_per_s": _r(sum(r.output_tokens for r in records) / duration if duration > 0 else 0.0),
        "prefix_hit_rate": _r(hits / prompt if prompt else 0.0),
        "engine_requests": per_engine,
        "load_imbalance": _r(imbalance),
        "preemptions": sum(result.engine_preemptions),
        "disaggregated": _r(disaggregated / len(records) if records else 0.0),
    }
