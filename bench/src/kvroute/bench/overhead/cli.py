"""`kvroute bench overhead`: what kvroute costs per decision, per proxied request and per remembered block.

Three parts (`--parts`, all by default):

- `scheduling`: latency of one `schedule()` for endpoints x prompt characters, with the built-in default
  configuration and the recommended one (`overhead.scheduling`);
- `proxy`: requests/s, latency and router CPU µs per request through `kvroute router --mode proxy` (and the peers
  named in `--routers`) in front of instant backends, at concurrency 1 and 32 (`overhead.proxy`); kvroute once per
  `--kvroute-workers` value (its `--workers`, default 1 and 2);
- `memory`: bytes per prefix-index entry (`overhead.memory`);
- `scrape`: metrics collection at 16, 256 and 1,024 endpoints served by one process on loopback addresses: CPU µs
  per scrape, scrapes/s per endpoint, the age of the metrics of endpoints requests go to, the serving loop's lag
  (`overhead.scrape`). Not in the default parts: it needs a file limit above 2,100 descriptors for 1,024.

Prints one markdown table per part; `--json FILE` also writes the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kvroute.bench.live.cli import names, port, positive
from kvroute.bench.live.cpu import load_average
from kvroute.bench.live.routers import ROUTERS
from kvroute.bench.overhead.memory import SCENARIOS, MemoryRow, run_memory
from kvroute.bench.overhead.proxy import ProxyRun, ProxySettings, run_proxy
from kvroute.bench.overhead.scheduling import ENDPOINT_COUNTS, PROMPT_CHARS, Cell, default_profiles, run_grid
from kvroute.bench.overhead.scrape import ENDPOINT_COUNTS as SCRAPE_COUNTS
from kvroute.bench.overhead.scrape import ScrapeRow
from kvroute.bench.overhead.scrape import run as run_scrape
from kvroute.bench.overhead.stacks import run_stacks, stacks_table
from kvroute.router.config.recommended import recommended_config_text

PARTS = ("scheduling", "proxy", "memory")
ALL_PARTS = (*PARTS, "scrape", "stacks")


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1")
    return values


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "overhead", help="scheduling latency, proxy CPU per request, index memory", description=__doc__
    )
    add = parser.add_argument
    add("--parts", type=names(ALL_PARTS), default=PARTS, help=f"what to measure (default {','.join(PARTS)})")
    add("--endpoints", type=_counts, default=ENDPOINT_COUNTS, help="scheduling: endpoint counts (default 16,...,1024)")
    add("--chars", type=_counts, default=PROMPT_CHARS, help="scheduling: prompt characters (default 1000,...,128000)")
    add("--budget", type=positive(float), default=1.0, help="scheduling: seconds of timed calls per cell (default 1)")
    add("--routers", type=names(ROUTERS), default=ROUTERS, help=f"proxy: routers (default {','.join(ROUTERS)})")
    add("--concurrency", type=_counts, default=(1, 32), help="proxy: concurrencies (default 1,32)")
    add(
        "--kvroute-workers",
        type=_counts,
        default=(1, 2),
        help="proxy: kvroute's --workers values, each measured (default 1,2)",
    )
    add("--requests", type=_counts, default=(2000, 10000), help="proxy: requests per concurrency (default 2000,10000)")
    add("--warmup", type=int, default=500, help="proxy: warm-up requests at concurrency 32 (default 500)")
    add(
        "--idle",
        type=positive(float),
        default=2.0,
        help="proxy: seconds of each router's idle CPU measurement (default 2)",
    )
    add("--backend-port", type=port, default=18400, help="proxy: backends' port on 127.0.0.2... (default 18400)")
    add("--router-port", type=port, default=18480, help="proxy: router i on this + i, metrics this + 10 + i")
    add("--entries", type=positive(int), default=500_000, help="memory: index entries per scenario (default 500000)")
    add("--scrape-endpoints", type=_counts, default=SCRAPE_COUNTS, help="scrape: endpoint counts (default 16,256,1024)")
    add("--scrape-seconds", type=positive(float), default=5.0, help="scrape: seconds measured per row (default 5)")
    add("--scrape-port", type=port, default=18500, help="scrape: the exposition server's port (default 18500)")
    add("--exposition", type=Path, help="scrape: serve this exposition (default: the simulator's vLLM 0.34 one)")
    add("--stack-requests", type=positive(int), default=20_000, help="stacks: requests per stack (default 20000)")
    add("--json", help="also write the numbers to this file")
    parser.set_defaults(run=run, parser=parser)


def _f(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def scheduling_table(cells: Sequence[Cell]) -> str:
    profiles = list(dict.fromkeys(c.profile for c in cells))
    header = "| endpoints | prompt chars | " + " | ".join(f"{p} p50 / p99 / CPU p99 µs" for p in profiles) + " |"
    lines = [header, "|---:|---:|" + "---:|" * len(profiles)]
    by_key = {(c.profile, c.endpoints, c.chars): c for c in cells}
    for endpoints, chars in dict.fromkeys((c.endpoints, c.chars) for c in cells):
        values = []
        for profile in profiles:
            c = by_key.get((profile, endpoints, chars))
            values.append("—" if c is None else f"{_f(c.p50_us)} / {_f(c.p99_us)} / {_f(c.cpu_p99_us)}")
        lines.append(f"| {endpoints:,} | {chars:,} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def proxy_table(runs: Sequence[ProxyRun]) -> str:
    lines = [
        "| path | concurrency | requests | req/s | p50 µs | p99 µs | router CPU µs/req | router CPU % | idle CPU % "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        label = f"{r.name} {r.version}".strip() + (f" --workers {r.processes}" if r.processes > 1 else "")
        if r.requests == 0:
            error = " ".join((r.error or "").split()).replace("|", "/")[:160]
            lines.append(f"| {label} |" + " — |" * 8 + f" did not run: {error} |")
            continue
        errors = f"{r.errors} ({r.error})" if r.errors else "0"
        lines.append(
            f"| {label} | {r.concurrency} | {r.requests:,} | {_f(r.requests_per_s, 0)} | {_f(r.p50_us, 0)} "
            f"| {_f(r.p99_us, 0)} | {_f(r.cpu_us_per_request, 0)} | {_f(r.cpu_percent, 0)} "
            f"| {_f(r.idle_cpu_percent, 1)} | {errors} |"
        )
    return "\n".join(lines)


def memory_table(rows: Sequence[MemoryRow]) -> str:
    lines = [
        "| endpoints | owners per hash | entries | distinct hashes | MB | bytes per entry | bytes per hash |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.endpoints:,} | {r.owners} | {r.entries:,} | {r.hashes:,} | {_f(r.bytes_total / 1e6, 1)} "
            f"| {_f(r.bytes_per_entry, 0)} | {_f(r.bytes_per_hash, 0)} |"
        )
    return "\n".join(lines)


def scrape_table(rows: Sequence[ScrapeRow]) -> str:
    lines = [
        "| endpoints | bodies | cadence | scrapes/s per endpoint | CPU µs/scrape | scraper thread CPU % "
        "| serving thread CPU % | age p50 / p99 ms (requested endpoints) | serving loop lag p99 ms "
        "| off the serving loop |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        bodies = f"changing ({r.changing:.0%})" if r.changing else "unchanged"
        if r.error is not None:
            lines.append(f"| {r.endpoints:,} | {bodies} | {r.cadence} |" + " — |" * 6 + f" did not run: {r.error} |")
            continue
        lines.append(
            f"| {r.endpoints:,} | {bodies} | {r.cadence} | {_f(r.scrapes_per_s_per_endpoint)} "
            f"| {_f(r.cpu_us_per_scrape)} "
            f"| {_f(r.scraper_cpu_percent)} | {_f(r.serving_cpu_percent)} | {_f(r.age_p50_ms)} / {_f(r.age_p99_ms)} "
            f"| {_f(r.loop_lag_p99_ms)} | {'yes' if r.separate_thread else 'no'} |"
        )
    return "\n".join(lines)


def _jsonable(rows: Sequence[Any]) -> list[dict[str, Any]]:
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(r).items()} for r in rows]


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if len(args.requests) != len(args.concurrency):
        parser.error("--requests needs one count per --concurrency value")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind, stopping every process by PID
    started = time.perf_counter()
    document: dict[str, Any] = {"benchmark": "overhead", "machine": {"cpus": os.cpu_count()}}
    document["machine"]["load_before"] = load_average()
    failed = False
    if "scheduling" in args.parts:
        cells = run_grid(default_profiles(), args.endpoints, args.chars, budget=args.budget)
        print("Scheduling latency, one schedule() call (worst case: every endpoint holds the whole prefix)\n")
        print(scheduling_table(cells) + "\n")
        document["scheduling"] = _jsonable(cells)
    if "proxy" in args.parts:
        settings = ProxySettings(
            routers=args.routers,
            backend_port=args.backend_port,
            router_port=args.router_port,
            concurrencies=args.concurrency,
            requests=args.requests,
            warmup=args.warmup,
            idle=args.idle,
            kvroute_workers=args.kvroute_workers,
        )
        with tempfile.TemporaryDirectory(prefix="kvroute-bench-overhead-") as tmp:
            config = Path(tmp) / "kvroute.yaml"
            config.write_text(recommended_config_text())
            runs = asyncio.run(run_proxy(settings, config))
        print("Proxy: 1 KB non-streaming completions, closed loop, instant backends\n")
        print(proxy_table(runs) + "\n")
        document["proxy"] = _jsonable(runs)
        failed = any(r.requests == 0 or r.errors for r in runs)
    if "memory" in args.parts:
        memory = run_memory(args.entries, SCENARIOS)
        print("Prefix index memory (tracemalloc)\n")
        print(memory_table(memory) + "\n")
        document["memory"] = [
            {**asdict(r), "bytes_per_entry": r.bytes_per_entry, "bytes_per_hash": r.bytes_per_hash} for r in memory
        ]
    if "scrape" in args.parts:
        scrape = run_scrape(args.scrape_endpoints, args.scrape_port, args.scrape_seconds, args.exposition)
        print("Metrics collection: idle pool but for 100 scheduling calls/s over 32 endpoints\n")
        print(scrape_table(scrape) + "\n")
        document["scrape"] = _jsonable(scrape)
        failed = failed or any(r.error is not None for r in scrape)
    if "stacks" in args.parts:
        stacks = asyncio.run(run_stacks(requests=args.stack_requests))
        print("HTTP stacks alone: a server answering at once, a client against an instant backend, concurrency 32\n")
        print(stacks_table(stacks) + "\n")
        document["stacks"] = _jsonable(stacks)
        failed = failed or any(r.error is not None for r in stacks)
    document["machine"]["load_after"] = load_average()
    print(
        f"load average before {document['machine']['load_before']}, after {document['machine']['load_after']} "
        f"({os.cpu_count()} CPUs); {time.perf_counter() - started:.0f}s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(f"json: {args.json}")
    return 1 if failed else 0
