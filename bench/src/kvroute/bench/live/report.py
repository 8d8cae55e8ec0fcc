"""The live benchmark's numbers: per-row summaries, a markdown table and a JSON document.

Percentiles are nearest-rank over the requests that produced the value (TTFT needs a first token). "Added TTFT"
is a router's probe TTFT minus the `direct` row's at the same percentile, both measured on an idle fleet;
"router CPU" is the router's CPU over the trace as a share of one core, next to its share when idle (metrics
scraping, health checks), and the CPU per request above that idle floor, for the probe's small requests and for
the trace's: `(CPU seconds - idle share x wall seconds) / requests`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from kvroute.bench.live.harness import DIRECT, Fleet, RowResult
from kvroute.bench.loadgen import Outcome


def _finite(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]) of `values`; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _ms(values: Sequence[float | None]) -> list[float]:
    return [v * 1e3 for v in values if v is not None]


def _ok(outcomes: Sequence[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status == 200 and o.error is None]


@dataclass(frozen=True)
class Summary:
    name: str
    version: str
    requests: int
    errors: int
    ttft_p50_ms: float
    ttft_p90_ms: float
    ttft_p99_ms: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    requests_per_s: float
    output_tokens_per_s: float
    prefix_hit_rate: float
    shares: tuple[float, ...]  # fraction of the trace each server answered, in fleet order
    probe_p50_ms: float
    probe_p90_ms: float
    added_p50_ms: float | None  # None for direct
    added_p90_ms: float | None
    idle_cpu_percent: float | None  # of one core
    trace_cpu_percent: float | None
    probe_cpu_ms_per_request: float | None  # above the idle floor
    cpu_ms_per_request: float | None  # trace, above the idle floor
    counters: dict[str, float]  # a peer's own routing counters
    error: str | None

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON values (NaN, which JSON lacks, becomes null)."""
        document: dict[str, Any] = _finite(asdict(self))
        return document


def summarize(row: RowResult, fleet: Fleet, direct: RowResult | None) -> Summary:
    ok = _ok(row.trace)
    ttft = _ms([o.ttft for o in ok])
    e2e = _ms([o.e2e for o in ok])
    probe = _ms([o.ttft for o in _ok(row.probe)])
    base = _ms([o.ttft for o in _ok(direct.probe)]) if direct is not None and direct.name != row.name else []
    added = {q: percentile(probe, q) - percentile(base, q) if base and probe else None for q in (0.5, 0.9)}
    prompt_tokens = sum(o.prompt_tokens for o in ok)
    span = row.makespan if row.makespan > 0 else math.nan
    trace_wall = row.trace_wall if row.trace_wall > 0 else math.nan
    return Summary(
        name=row.name,
        version=row.version,
        requests=len(row.trace),
        errors=len(row.trace) - len(ok),
        ttft_p50_ms=percentile(ttft, 0.5),
        ttft_p90_ms=percentile(ttft, 0.9),
        ttft_p99_ms=percentile(ttft, 0.99),
        e2e_p50_ms=percentile(e2e, 0.5),
        e2e_p99_ms=percentile(e2e, 0.99),
        requests_per_s=len(ok) / span,
        output_tokens_per_s=sum(o.output_tokens for o in ok) / span,
        prefix_hit_rate=sum(o.cached_tokens for o in ok) / prompt_tokens if prompt_tokens else math.nan,
        shares=tuple(
            sum(1 for o in ok if o.pod == fleet.pod(i)) / len(ok) if ok else math.nan for i in range(len(fleet.hosts))
        ),
        probe_p50_ms=percentile(probe, 0.5),
        probe_p90_ms=percentile(probe, 0.9),
        added_p50_ms=added[0.5],
        added_p90_ms=added[0.9],
        idle_cpu_percent=row.idle_cpu * 100 if row.idle_cpu is not None else None,
        trace_cpu_percent=row.router_cpu * 100 / trace_wall if row.router_cpu is not None else None,
        probe_cpu_ms_per_request=_above_idle(row.probe_cpu, row.idle_cpu, row.probe_wall, len(row.probe)),
        cpu_ms_per_request=_above_idle(row.router_cpu, row.idle_cpu, row.trace_wall, len(row.trace)),
        counters=row.counters,
        error=row.error,
    )


def _above_idle(cpu: float | None, idle: float | None, wall: float, requests: int) -> float | None:
    """Milliseconds of CPU per request above the idle floor."""
    if cpu is None or idle is None or not requests:
        return None
    return (cpu - idle * wall) * 1e3 / requests


def summarize_all(rows: Sequence[RowResult], fleet: Fleet) -> list[Summary]:
    direct = next((r for r in rows if r.name == DIRECT and r.error is None), None)
    return [summarize(row, fleet, direct) for row in rows]


def _num(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _cell(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


HEADER = (
    "| router | TTFT p50 | TTFT p90 | TTFT p99 | e2e p50 | e2e p99 | req/s | output tok/s | prefix hit rate "
    "| requests per server | added TTFT p50 / p90 | router CPU % idle / trace | CPU ms/req probe / trace | errors |"
)


def markdown(summaries: Sequence[Summary]) -> str:
    """One row per router; times in ms. A router that did not run shows its error in the last column."""
    lines = [HEADER, "|---|" + "---:|" * 8 + "---|---:|---:|---:|---|"]
    for s in summaries:
        label = f"{s.name} {s.version}".strip()
        if s.error is not None:
            lines.append(f"| {label} |" + " — |" * 12 + f" did not run: {_cell(s.error)} |")
            continue
        added = "—" if s.added_p50_ms is None else f"{_num(s.added_p50_ms, 2, True)} / {_num(s.added_p90_ms, 2, True)}"
        shares = " / ".join("—" if math.isnan(x) else f"{x:.0%}" for x in s.shares)
        hit = "—" if math.isnan(s.prefix_hit_rate) else f"{s.prefix_hit_rate:.1%}"
        lines.append(
            f"| {label} | {_num(s.ttft_p50_ms)} | {_num(s.ttft_p90_ms)} | {_num(s.ttft_p99_ms)} "
            f"| {_num(s.e2e_p50_ms)} | {_num(s.e2e_p99_ms)} | {_num(s.requests_per_s, 2)} "
            f"| {_num(s.output_tokens_per_s, 0)} | {hit} | {shares} | {added} "
            f"| {_num(s.idle_cpu_percent, 0)} / {_num(s.trace_cpu_percent, 0)} "
            f"| {_num(s.probe_cpu_ms_per_request, 2)} / {_num(s.cpu_ms_per_request, 2)} "
            f"| {s.errors} of {s.requests} |"
        )
    return "\n".join(lines)
