"""`kvroute sim des`: run a synthetic shared-prefix workload through the discrete-event harness."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from kvroute.simulator.des.harness import SimulationResult, simulate
from kvroute.simulator.des.policies import POLICIES
from kvroute.simulator.des.workload import shared_prefix
from kvroute.simulator.engine.profiles import DEFAULT_PROFILE, PROFILES, get_profile


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "des",
        help="simulate a fleet in virtual time (shared-prefix workload)",
        description="Run N engines under a virtual clock with a baseline routing policy; print latency and wall time.",
    )
    parser.add_argument("--requests", type=int, default=10_000, help="number of requests (default 10000)")
    parser.add_argument("--engines", type=int, default=8, help="number of engines (default 8)")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES), help="engine profile")
    parser.add_argument("--groups", type=int, default=64, help="distinct system prompts (default 64)")
    parser.add_argument("--system-tokens", type=int, default=3000, help="system prompt length (default 3000)")
    parser.add_argument("--question-tokens", type=int, default=128, help="question length (default 128)")
    parser.add_argument("--output-tokens", type=int, default=128, help="tokens generated per request (default 128)")
    parser.add_argument("--rate", type=float, default=40.0, help="Poisson arrival rate, requests/s (default 40)")
    parser.add_argument("--policy", default="least-loaded", choices=sorted(POLICIES), help="routing policy")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=run)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(result: SimulationResult) -> dict[str, float]:
    ttft = [r.ttft for r in result.records if r.ttft is not None]
    e2e = [r.e2e for r in result.records if r.e2e is not None]
    prompt = sum(r.prompt_tokens for r in result.records) or 1
    return {
        "requests": len(result.records),
        "unfinished": result.unfinished,
        "simulated_s": round(result.duration, 3),
        "ttft_p50_s": percentile(ttft, 0.5),
        "ttft_p90_s": percentile(ttft, 0.9),
        "ttft_p99_s": percentile(ttft, 0.99),
        "e2e_p50_s": percentile(e2e, 0.5),
        "prefix_hit_rate": sum(r.cached_tokens for r in result.records) / prompt,
        "output_tokens_per_s": sum(r.output_tokens for r in result.records) / max(result.duration, 1e-9),
    }


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    workload = shared_prefix(
        num_requests=args.requests,
        groups=args.groups,
        system_tokens=args.system_tokens,
        question_tokens=args.question_tokens,
        output_tokens=args.output_tokens,
        rate=args.rate,
        seed=args.seed,
    )
    result = simulate([get_profile(args.profile)] * args.engines, workload, POLICIES[args.policy]())
    summary: dict[str, Any] = summarize(result)
    summary["wall_s"] = round(time.perf_counter() - started, 2)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")
    return 0
