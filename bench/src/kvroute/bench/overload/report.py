"""The overload benchmark's markdown: one table row per run (seed, overload, mode)."""

from __future__ import annotations

from typing import Any

from kvroute.bench.overload.scenario import CRITICAL, STANDARD

_HEADER = (
    "| run | crit TTFT p50 / p90 (s) | p90 / unloaded | crit wait p90 (s) | std TTFT p90 (s) | refused 429 / 503 "
    "| lost | goodput (req/s) | within SLO | Jain (fair share / raw) | router RSS max (MiB) |"
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _row(name: str, run: dict[str, Any]) -> str:
    critical, standard = run["bands"][CRITICAL], run["bands"][STANDARD]
    refused = {k: critical["refused"].get(k, 0) + standard["refused"].get(k, 0) for k in ("429", "503")}
    ratio = run.get("critical_p90_vs_unloaded")
    rss = run.get("router_rss_mib")
    rss_text = "-"
    if rss is not None:
        rss_text = " / ".join(f"{rss[k]:.0f}" for k in ("first_third_max", "middle_third_max", "last_third_max"))
    return (
        f"| {name} | {_ms(critical['ttft_p50_s'])} / {_ms(critical['ttft_p90_s'])} "
        f"| {'-' if ratio is None else f'{ratio:.2f}x'} | {_ms(critical['wait_p90_s'])} "
        f"| {_ms(standard['ttft_p90_s'])} | {refused['429']} / {refused['503']} | {run['lost']} "
        f"| {run['goodput_rps']:.1f} | {run['slo_goodput_rps']:.1f} "
        f"| {_ms(run['jain_fair_share'])} / {_ms(run['jain_raw'])} | {rss_text} |"
    )


def markdown(results: dict[str, Any]) -> str:
    scenario = results["scenario"]
    lines = [
        f"# Overload ({results['harness']})",
        "",
        f"{scenario['engines']} engines x {scenario['max_num_seqs']} sequences, capacity "
        f"{scenario['capacity_rps']:.1f} req/s; critical tenant at {scenario['critical_load']:.0%} of capacity, four "
        f"standard tenants (greedy 5x each other); {scenario['duration_s']:g} s of arrivals; TTL "
        f"{scenario['ttl_s']:g} s; holdback minCeiling {scenario['holdback_min_ceiling']:g}; SLO TTFT "
        f"{scenario['slo_ttft_s']:g} s. Router RSS: the max of each third of the run.",
        "",
        _HEADER,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_row(name, run) for name, run in results["runs"].items()]
    lines += ["", f"Wall time {results['wall_s']} s.", ""]
    return "\n".join(lines)
