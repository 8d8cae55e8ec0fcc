"""`kvroute bench live`: one trace through kvroute, sglang-router and vllm-router, side by side, on loopback.

The trace is the demo's shared-prefix workload (12 system prompts of 8,000 characters, short questions;
`kvroute.bench.demo.shared_prefix_trace`), open loop at `--rate` per second for `--duration` seconds and at most
`--max-requests` requests. It runs once per row against a fleet of `--sims` fresh `kvroute sim serve` processes
(8B-on-H100 timing, 600 KV blocks each) on 127.0.0.2 and up; the routers listen on 127.0.0.1. The first row,
`direct`, has no router: the client spreads the trace round-robin over the servers, and its idle probe is the
baseline of every router's added latency (see `harness`). kvroute runs its recommended configuration
(`kvroute.router.config.recommended`), the peers their `cache_aware` policy with default parameters.

Prints a markdown table and writes a JSON document with the same numbers and the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvroute.bench.demo import shared_prefix_trace
from kvroute.bench.live.cpu import load_average
from kvroute.bench.live.harness import DIRECT, Fleet, Phases, RowResult, run_row
from kvroute.bench.live.report import markdown, summarize_all
from kvroute.bench.live.routers import ROUTERS, RouterSite
from kvroute.bench.processes import loopback
from kvroute.router.config.recommended import recommended_config_text


def names(choices: Sequence[str]) -> Any:
    """An argparse type: a comma-separated selection from `choices`, in the order given, without repeats."""

    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        if not chosen or any(n not in choices for n in chosen):
            raise argparse.ArgumentTypeError(f"choose among {', '.join(choices)} (got {text!r})")
        return chosen

    return parse


def port(text: str) -> int:
    """An argparse type: a TCP port with room after it (routers take the next 20 ports)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535 - 20:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 1 and {65535 - 20}")
    return value


def positive(kind: type[int] | type[float]) -> Any:
    """An argparse type: a positive int or float."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value

    return parse


def _loopback_host(text: str) -> str:
    try:
        return loopback(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any) -> None:
    parser = sub.add_parser("live", help="kvroute vs sglang-router vs vllm-router on simulators", description=__doc__)
    add = parser.add_argument
    add("--routers", type=names(ROUTERS), default=ROUTERS, help=f"routers after direct (default {','.join(ROUTERS)})")
    add("--sims", type=positive(int), default=4, help="simulated servers, on 127.0.0.2 and up (default 4)")
    add("--sim-port", type=port, default=18100, help="port of every simulator (default 18100)")
    add("--router-host", type=_loopback_host, default="127.0.0.1", help="routers' address (default 127.0.0.1)")
    add(
        "--router-port",
        type=port,
        default=18180,
        help="router i listens on this + i, its Prometheus port is this + 10 + i (default 18180)",
    )
    add("--duration", type=positive(float), default=30.0, help="seconds of arrivals (default 30)")
    add("--rate", type=positive(float), default=10.0, help="requests per second (default 10)")
    add("--max-requests", type=positive(int), default=300, help="at most this many trace requests (default 300)")
    add("--warmup", type=positive(int), default=32, help="concurrent warm-up requests (default 32)")
    add("--probe", type=positive(int), default=100, help="sequential probe requests (default 100)")
    add("--idle", type=positive(float), default=3.0, help="seconds of the router's idle CPU measurement (default 3)")
    add("--timeout", type=positive(float), default=60.0, help="seconds per request (default 60)")
    add("--seed", type=int, default=1, help="trace seed (default 1)")
    add("--json", default="kvroute-bench-live.json", help="where to write the JSON (default kvroute-bench-live.json)")
    parser.set_defaults(run=run, parser=parser)


async def _run_rows(args: argparse.Namespace, fleet: Fleet, config: Path) -> list[RowResult]:
    plan = shared_prefix_trace(args.duration, args.rate, args.seed)[: args.max_requests]
    phases = Phases(warmup=args.warmup, probe=args.probe, idle=args.idle, timeout=args.timeout)
    rows = []
    for index, name in enumerate((DIRECT, *args.routers)):
        site = RouterSite(args.router_host, args.router_port + index, args.router_port + 10 + index)
        rows.append(await run_row(name, fleet, site, plan, phases, config=config, seed=args.seed))
    return rows


def run(args: argparse.Namespace) -> int:
    if args.sims > 250:
        args.parser.error("at most 250 simulators (127.0.0.2-127.0.0.251)")
    # SIGTERM unwinds like Ctrl-C, so every process started so far is stopped by PID on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    fleet = Fleet(tuple(f"127.0.0.{i}" for i in range(2, 2 + args.sims)), args.sim_port)
    load_before = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kvroute-bench-live-") as tmp:
        config = Path(tmp) / "kvroute.yaml"
        config.write_text(recommended_config_text())
        rows = asyncio.run(_run_rows(args, fleet, config))
    summaries = summarize_all(rows, fleet)
    load_after = load_average()
    print(markdown(summaries))
    print(
        f"\n{len(fleet.hosts)} simulators; load average before {load_before}, after {load_after} "
        f"({os.cpu_count()} CPUs); {time.perf_counter() - started:.0f}s"
    )
    document = {
        "benchmark": "live",
        "settings": {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | tuple)},
        "machine": {"cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after},
        "rows": [s.to_json() for s in summaries],
    }
    Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    print(f"json: {args.json}")
    return 0 if all(s.error is None and s.errors == 0 for s in summaries) else 1
