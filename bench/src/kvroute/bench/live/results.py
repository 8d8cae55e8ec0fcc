"""Replayed workloads' results in the quality benchmark's shape: `results.json`, `results.md` and the same plots.

Per workload and router (`direct` included), the quality benchmark's metrics, measured on the live processes:
TTFT p50 / p90 / p99 / mean and end-to-end p50 / p90 / p99 / mean (seconds, at the client, over the requests that
succeeded; nearest rank), output tokens/s over the trace's makespan, and from the simulators' own counters
(`servers`) the prefix-cache hit rate, the requests per server and the load imbalance (busiest / mean), the
preemptions. Live only: `errors` (requests without an answer), `router_cpu_ms_per_request` above the router's
idle floor, `router_idle_cpu_percent`, `added_ttft_p50_ms` on the idle probe against `direct`, `version`,
`error` (a router that did not run: every metric null). Then `fidelity`: each row against its model in the
harness (`kvroute.bench.live.fidelity`).

The verdict, the per-family table and the summary line are the quality benchmark's (`kvroute.bench.quality.
report`): kvroute against the best other router on TTFT p90, a tie within 5% or 10 ms. Wall-clock numbers vary
from run to run with the machine's load, so the JSON is not byte-identical across runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kvroute.bench.live.fidelity import markdown as fidelity_markdown
from kvroute.bench.live.harness import RowResult
from kvroute.bench.live.report import percentile
from kvroute.bench.live.servers import ServerCounters
from kvroute.bench.quality.report import COLUMNS, family_table, summary, verdict, write_json

_COLUMNS = (
    *COLUMNS[:7],
    ("requests per server", "engine_requests", None),
    *COLUMNS[7:],
    ("errors", "errors", "{}"),
    ("router CPU ms/req", "router_cpu_ms_per_request", "{:.2f}"),
)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _quantiles(values: Sequence[float], prefix: str) -> dict[str, float | None]:
    found = {f"{prefix}_p{round(q * 100)}_s": percentile(values, q) if values else None for q in (0.5, 0.9, 0.99)}
    return {**found, f"{prefix}_mean_s": _mean(values)}


def _above_idle(cpu: float | None, idle: float | None, wall: float, requests: int) -> float | None:
    if cpu is None or idle is None or not requests:
        return None
    return (cpu - idle * wall) * 1e3 / requests


def row_metrics(row: RowResult, direct: RowResult | None) -> dict[str, Any]:
    """The quality benchmark's metrics of one live row (see the module's docstring)."""
    ok = [o for o in row.trace if o.status == 200 and o.error is None]
    ttft = [o.ttft for o in ok if o.ttft is not None]
    e2e = [o.e2e for o in ok if o.e2e is not None]
    servers = row.servers or [ServerCounters()]
    engine_requests = [round(s.requests) for s in servers]
    queries = sum(s.prefix_queries for s in servers)
    mean_requests = sum(engine_requests) / len(engine_requests)
    probe = [o.ttft for o in row.probe if o.ttft is not None and o.error is None]
    base = [o.ttft for o in direct.probe if o.ttft is not None and o.error is None] if direct is not None else []
    metrics: dict[str, Any] = {
        "requests": len(row.trace),
        "errors": len(row.trace) - len(ok),
        "unfinished": len(row.trace) - len(ok),
        "duration_s": row.makespan,
        **_quantiles(ttft, "ttft"),
        **_quantiles(e2e, "e2e"),
        "output_tokens_per_s": sum(s.output_tokens for s in servers) / row.makespan if row.makespan > 0 else None,
        "prefix_hit_rate": sum(s.prefix_hits for s in servers) / queries if queries else None,
        "engine_requests": engine_requests,
        "load_imbalance": max(engine_requests) / mean_requests if mean_requests else None,
        "preemptions": round(sum(s.preemptions for s in servers)),
        "router_cpu_ms_per_request": _above_idle(row.router_cpu, row.idle_cpu, row.trace_wall, len(row.trace)),
        "router_idle_cpu_percent": row.idle_cpu * 100 if row.idle_cpu is not None else None,
        "added_ttft_p50_ms": (percentile(probe, 0.5) - percentile(base, 0.5)) * 1e3
        if probe and base and direct is not row
        else None,
        "version": row.version,
        "error": row.error,
    }
    if row.error is not None:
        metrics.update({k: None for k, v in metrics.items() if isinstance(v, int | float) and k != "requests"})
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


def _cell(value: Any, fmt: str | None) -> str:
    if value is None:
        return "-"
    if fmt is None:
        return " / ".join(str(v) for v in value)
    return fmt.format(value)


def markdown(results: Mapping[str, Any], command: str) -> str:
    """The TTFT p90 table with verdicts, the per-family table and summary, then a table per workload."""
    routers = list(results["policies"])
    lines = [
        "# Live: kvroute and the real peer routers on simulator processes",
        "",
        "Reproduce with:",
        "",
        "```sh",
        command,
        "```",
        "",
        "## TTFT p90 (s) by workload and router",
        "",
        "| workload | " + " | ".join(routers) + " | kvroute vs best other router |",
        "|---|" + "---:|" * len(routers) + "---|",
    ]
    for workload, per_router in results["results"].items():
        values = {r: per_router[r]["ttft_p90_s"] for r in routers}
        finite = [v for v in values.values() if v is not None]
        best = min(finite) if finite else None
        cells = [f"**{v:.3f}**" if v is not None and v == best else _cell(v, "{:.3f}") for v in values.values()]
        found = verdict(per_router)
        cells.append("-" if found is None else f"{found[0]} ({found[2]:.2f}x {found[1]})")
        lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: the lowest TTFT p90.", ""]
    # the family table ends with the summary line
    lines += family_table(results) if any(i.get("family") for i in results["workloads"].values()) else summary(results)
    lines += fidelity_markdown(results.get("fidelity", {}))
    for workload, per_router in results["results"].items():
        info = results["workloads"][workload]
        live = info["live"]
        fleet = f"{info['engines']} x {info['profile']}, {info['num_gpu_blocks']:,} KV blocks each"
        if info.get("slow_engines"):
            fleet += f", {info['slow_engines']} of them {info['slow_factor']:g}x slower"
        if live["arrivals_stretched"] != 1:
            fleet += (
                f" (the workload's {live['engines_in_workload']} engines cut to {info['engines']}, arrivals "
                f"stretched {live['arrivals_stretched']:.2f}x)"
            )
        lines += [
            f"## {workload}",
            "",
            f"{info['description']}. {fleet}; {info['requests']:,} of the workload's "
            f"{live['requests_in_workload']:,} requests, {info['prompt_tokens']:,} prompt and "
            f"{info['output_tokens']:,} output tokens, arrivals over {info['last_arrival_s']:.0f} s of modelled "
            f"time at time scale {live['time_scale']:g}.",
            "",
            "| router | " + " | ".join(title for title, _, _ in _COLUMNS) + " |",
            "|---|" + "---:|" * len(_COLUMNS),
        ]
        for router, metrics in per_router.items():
            label = f"{router} {metrics['version']}".strip()
            if metrics["error"] is not None:
                lines.append(f"| {label} |" + " - |" * (len(_COLUMNS) - 1) + f" did not run: {metrics['error']} |")
                continue
            lines.append(f"| {label} | " + " | ".join(_cell(metrics[k], f) for _, k, f in _COLUMNS) + " |")
        lines.append("")
    return "\n".join(lines)


def write_all(results: Mapping[str, Any], out: Path, command: str, *, plots: bool = True) -> list[Path]:
    """results.json, results.md and (with `plots`) the quality benchmark's PNGs, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.md"]
    write_json(results, written[0])
    written[1].write_text(markdown(results, command))
    if plots:
        from kvroute.bench.quality.plots import write_plots

        written += write_plots(results, out)
    return written
