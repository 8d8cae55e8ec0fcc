"""`kvroute bench overload`: a pool offered 1.5-3x what it serves; priority bands, tenants, one of them greedy.

    kvroute bench overload --overload 1.5,2,3 --seeds 1000,1001 --out docs/benchmarks/overload
    kvroute bench overload --live --overload 2 --seeds 1000 --duration 30 --modes gie-shedding,flow-control-holdback

The scenario (`kvroute.bench.overload.scenario`): `--engines` engines of `--max-num-seqs` sequences, a critical
tenant at `--critical-load` of capacity and four standard tenants, `greedy` sending 5x each of the others, for
`--duration` seconds. Every mode (`kvroute.bench.overload.modes`: forward, gie-shedding, flow-control,
flow-control-holdback) runs on the same requests, and a reference run has the critical tenant alone on the pool
(its "unloaded" TTFT). The discrete-event harness runs by default; `--live` runs real processes (slower by
`--time-scale`).

Reported per run: the critical band's TTFT p50 / p90 and its ratio to the unloaded p90, the standard band's,
queue waits, refusals by status, requests lost, goodput (completions within the window per second, and those
within `--slo-ttft`), Jain's index across the standard tenants; live, the router's RSS over the run. Results go to
`--out` as results.json and results.md; the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from kvroute.bench.overload import des, live, modes
from kvroute.bench.overload.metrics import Outcome, summarise
from kvroute.bench.overload.report import markdown
from kvroute.bench.overload.scenario import CRITICAL, Scenario, capacity

ALONE = "critical-alone"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "overload",
        help="flow control under overload: priority bands, fairness between tenants, refusals",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--overload", default="1.5,2,3", help="offered load / capacity, comma-separated")
    parser.add_argument("--seeds", default="1000,1001", help="scenario seeds, comma-separated (default 1000,1001)")
    parser.add_argument("--modes", default=",".join(modes.MODES), help=f"comma-separated of {', '.join(modes.MODES)}")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals (default 60)")
    parser.add_argument("--engines", type=int, default=3, help="engines in the pool (default 3)")
    parser.add_argument("--max-num-seqs", type=int, default=16, help="sequences per engine batch (default 16)")
    parser.add_argument("--critical-load", type=float, default=0.2, help="critical rate / capacity (default 0.2)")
    parser.add_argument("--ttl", type=float, default=10.0, help="flow control's defaultRequestTTL, s (default 10)")
    parser.add_argument(
        "--holdback",
        type=float,
        default=0.7,
        help="minCeiling of the standard band in flow-control-holdback (default 0.7, chosen on training seeds 1-3)",
    )
    parser.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT counted as good, s (default 2)")
    parser.add_argument("--live", action="store_true", help="real simulator and router processes")
    parser.add_argument("--time-scale", type=float, default=4.0, help="live: wall seconds per modelled second")
    parser.add_argument("--out", type=Path, help="write results.json and results.md here")
    parser.set_defaults(run=run_command)


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def run_command(args: argparse.Namespace) -> int:
    chosen = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(modes.MODES))
    if unknown:
        print(f"unknown mode(s): {', '.join(unknown)}; known: {', '.join(modes.MODES)}", file=sys.stderr)
        return 2
    scenario = Scenario(
        engines=args.engines,
        max_num_seqs=args.max_num_seqs,
        duration_s=args.duration,
        critical_load=args.critical_load,
    )
    started = time.perf_counter()
    pool_capacity = capacity(scenario)
    settings = live.LiveSettings(time_scale=args.time_scale)
    results: dict[str, Any] = {
        "benchmark": "overload",
        "harness": "live" if args.live else "discrete-event",
        "scenario": {
            "engines": scenario.engines,
            "max_num_seqs": scenario.max_num_seqs,
            "prompt_tokens": scenario.system_tokens + scenario.question_tokens,
            "output_tokens_median": scenario.output_tokens,
            "duration_s": scenario.duration_s,
            "critical_load": scenario.critical_load,
            "tenants": {t.name: {"objective": t.objective, "weight": t.weight} for t in scenario.tenants},
            "capacity_rps": round(pool_capacity, 3),
            "ttl_s": args.ttl,
            "holdback_min_ceiling": args.holdback,
            "slo_ttft_s": args.slo_ttft,
            **({"time_scale": args.time_scale} if args.live else {}),
        },
        "runs": {},
    }
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        alone = scenario.requests(1.0, pool_capacity, seed, only=CRITICAL)
        forward = modes.config_text(modes.FORWARD, scenario.max_num_seqs, args.ttl)
        reference = _run(args, scenario, forward, alone, seed, settings)
        unloaded = reference["bands"][CRITICAL]["ttft_p90_s"]
        results["runs"][f"s{seed}/{ALONE}"] = reference
        _progress(f"seed {seed}: critical alone, TTFT p90 {unloaded}")
        for overload in _floats(args.overload):
            requests = scenario.requests(overload, pool_capacity, seed)
            for mode in chosen:
                config = modes.config_text(mode, scenario.max_num_seqs, args.ttl, args.holdback)
                summary = _run(args, scenario, config, requests, seed, settings)
                p90 = summary["bands"][CRITICAL]["ttft_p90_s"]
                summary["critical_p90_vs_unloaded"] = round(p90 / unloaded, 3) if p90 and unloaded else None
                summary["overload"] = overload
                summary["mode"] = mode
                results["runs"][f"s{seed}/{overload:g}x/{mode}"] = summary
                _progress(f"seed {seed}, {overload:g}x, {mode}: done")
    results["wall_s"] = round(time.perf_counter() - started, 1)
    text = markdown(results)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "results.md").write_text(text)
        print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return 0


def _run(
    args: argparse.Namespace,
    scenario: Scenario,
    config: str,
    requests: list[Any],
    seed: int,
    settings: live.LiveSettings,
) -> dict[str, Any]:
    if not args.live:
        outcomes: list[Outcome] = des.run(config, scenario.fleet, requests, seed)
        return summarise(outcomes, scenario.duration_s, args.slo_ttft)
    result = asyncio.run(live.run(scenario, config, requests, settings))
    summary = summarise(result.outcomes, scenario.duration_s, args.slo_ttft)
    summary["client_errors"] = result.errors
    if result.rss_mib:
        values = [mib for _, mib in result.rss_mib]
        thirds = len(values) // 3 or 1
        summary["router_rss_mib"] = {
            "first_third_max": max(values[:thirds]),
            "middle_third_max": max(values[thirds : 2 * thirds] or values),
            "last_third_max": max(values[2 * thirds :] or values),
            "samples": result.rss_mib,
        }
    return summary


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
