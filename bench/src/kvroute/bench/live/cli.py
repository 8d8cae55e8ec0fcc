"""`kvroute bench live`: kvroute and the real peer routers side by side on loopback simulator processes.

Two modes:

- **Overhead trace** (without `--workloads` / `--families`): the demo's shared-prefix workload (12 system prompts
  of 8,000 characters, short questions; `kvroute.bench.demo.shared_prefix_trace`), open loop at `--rate` per
  second for `--duration` seconds and at most `--max-requests` requests, on `--sims` fresh `kvroute sim serve`
  processes (8B-on-H100 timing, 600 KV blocks each). Prints a markdown table focused on what each router adds
  (latency on an idle probe, CPU) and writes `--json`.
- **Replay** (`--workloads` and/or `--families`, as in `kvroute bench quality`, same files and seeds): each
  workload on its own fleet of simulators (`kvroute.bench.live.replay`: its profile and KV size, at most
  `--max-sims`, `--time-scale` compressing the run), its first `--max-requests` requests of the first
  `--duration` seconds; writes the quality benchmark's `results.json` / `results.md` / plots to `--out`.

Rows, in order: `direct` (no router: the client spreads the requests round-robin over the servers; its idle probe
is the baseline of every router's added latency), then `--routers`: kvroute (its recommended configuration,
`kvroute.router.config.recommended`), `dynamo-kv` and `dynamo-approx` (NVIDIA Dynamo's frontend with its KV
router on KV events, and in its approximate mode without them, over one worker adapter per simulator:
`kvroute.bench.live.dynamo`), sglang-router and vllm-router (`cache_aware`, default parameters). Every row starts
its fleet anew, so each router meets cold caches; simulators listen on 127.0.0.2 and up, routers on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvroute.bench.demo import shared_prefix_trace
from kvroute.bench.live.cpu import load_average
from kvroute.bench.live.fidelity import compare
from kvroute.bench.live.harness import DIRECT, Fleet, Phases, RowResult, run_row
from kvroute.bench.live.replay import LiveWorkload, LiveWorkloadError, live_workloads
from kvroute.bench.live.report import markdown, summarize_all
from kvroute.bench.live.results import row_metrics, write_all
from kvroute.bench.live.routers import ALL_ROUTERS, ROUTERS, RouterSite
from kvroute.bench.processes import loopback
from kvroute.bench.quality.cli import add_workload_arguments, workloads
from kvroute.bench.quality.workloads import WorkloadError
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
    parser = sub.add_parser(
        "live",
        help="kvroute vs the real peer routers on simulator processes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--routers",
        type=names(ALL_ROUTERS),
        default=ROUTERS,
        help=f"routers after direct, among {','.join(ALL_ROUTERS)} (default {','.join(ROUTERS)})",
    )
    add(
        "--sims",
        type=positive(int),
        default=4,
        help="overhead trace: simulated servers, on 127.0.0.2 and up (default 4)",
    )
    add("--sim-port", type=port, default=18100, help="port of every simulator (default 18100)")
    add(
        "--kv-events-port",
        type=port,
        default=18150,
        help="Dynamo rows: port of every simulator's KV-events publisher (default 18150)",
    )
    add("--router-host", type=_loopback_host, default="127.0.0.1", help="routers' address (default 127.0.0.1)")
    add(
        "--router-port",
        type=port,
        default=18180,
        help="router i listens on this + i, its Prometheus port is this + 10 + i (default 18180)",
    )
    add("--duration", type=positive(float), default=30.0, help="seconds of arrivals (default 30)")
    add("--rate", type=positive(float), default=10.0, help="overhead trace: requests per second (default 10)")
    add("--max-requests", type=positive(int), default=300, help="at most this many trace requests (default 300)")
    add("--warmup", type=positive(int), default=32, help="concurrent warm-up requests (default 32)")
    add("--probe", type=positive(int), default=100, help="sequential probe requests (default 100)")
    add("--idle", type=positive(float), default=3.0, help="seconds of the router's idle CPU measurement (default 3)")
    add("--timeout", type=positive(float), default=60.0, help="seconds per request (default 60)")
    add("--seed", type=int, default=1, help="trace seed; replay: run seed and family sample seed (default 1)")
    add("--json", default="kvroute-bench-live.json", help="overhead trace: the JSON (default kvroute-bench-live.json)")
    add_workload_arguments(parser)
    add("--max-sims", type=positive(int), default=8, help="replay: at most this many simulators (default 8)")
    add(
        "--time-scale",
        type=positive(float),
        default=1.0,
        help="replay: wall seconds per modelled second, arrivals and engines alike (default 1; 0.5 runs twice as fast)",
    )
    add("--out", default="live-results", help="replay: output directory (default live-results)")
    add("--no-plots", action="store_true", help="replay: write the JSON and markdown only")
    parser.set_defaults(run=run, parser=parser)


def _site(args: argparse.Namespace, index: int) -> RouterSite:
    return RouterSite(args.router_host, args.router_port + index, args.router_port + 10 + index)


def _phases(args: argparse.Namespace) -> Phases:
    return Phases(warmup=args.warmup, probe=args.probe, idle=args.idle, timeout=args.timeout)


async def _run_rows(args: argparse.Namespace, fleet: Fleet, config: Path) -> list[RowResult]:
    plan = shared_prefix_trace(args.duration, args.rate, args.seed)[: args.max_requests]
    rows = []
    for index, name in enumerate((DIRECT, *args.routers)):
        rows.append(await run_row(name, fleet, _site(args, index), plan, _phases(args), config=config, seed=args.seed))
    return rows


def _fleet(args: argparse.Namespace, count: int, engine_args: tuple[tuple[str, ...], ...] = ()) -> Fleet:
    if count > 250:
        args.parser.error("at most 250 simulators (127.0.0.2-127.0.0.251)")
    return Fleet(
        tuple(f"127.0.0.{i}" for i in range(2, 2 + count)),
        args.sim_port,
        engine_args=engine_args,
        kv_events_port=args.kv_events_port if any(r.startswith("dynamo") for r in args.routers) else None,
    )


def run(args: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C, so every process started so far is stopped by PID on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.workloads is not None or args.families:
        return replay(args)
    fleet = _fleet(args, args.sims)
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


async def _replay_rows(args: argparse.Namespace, workload: LiveWorkload, config: Path) -> dict[str, dict[str, Any]]:
    fleet = _fleet(args, workload.engines, workload.engine_args)
    rows: list[RowResult] = []
    for index, name in enumerate((DIRECT, *args.routers)):
        if workload.lora and name.startswith("dynamo"):
            rows.append(RowResult(name, error="LoRA requests: the Dynamo worker adapter serves the base model only"))
            continue
        rows.append(
            await run_row(name, fleet, _site(args, index), workload.plan, _phases(args), config=config, seed=args.seed)
        )
    direct = rows[0] if rows[0].error is None else None
    return {row.name: row_metrics(row, direct) for row in rows}


def _command(args: argparse.Namespace) -> str:
    parts = ["kvroute bench live"]
    for flag in ("workloads", "families", "sample", "routers", "seed", "max_sims", "time_scale", "duration"):
        value = getattr(args, flag)
        if value is not None:
            text = ",".join(value) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) else value
            parts.append(f"--{flag.replace('_', '-')} {text}")
    parts.append(f"--max-requests {args.max_requests} --out {args.out}")
    return " ".join(parts)


def replay(args: argparse.Namespace) -> int:
    try:
        specs = workloads(args)
        selected = live_workloads(
            specs,
            args.seed,
            time_scale=args.time_scale,
            max_sims=args.max_sims,
            max_requests=args.max_requests,
            duration=args.duration,
        )
    except (WorkloadError, LiveWorkloadError, ValueError, OSError) as exc:
        args.parser.error(str(exc))
    load_before = load_average()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "live",
        "seed": args.seed,
        "workloads": {},
        "policies": [DIRECT, *args.routers],
        "results": {},
        "fidelity": {},
    }
    with tempfile.TemporaryDirectory(prefix="kvroute-bench-live-") as tmp:
        config = Path(tmp) / "kvroute.yaml"
        config.write_text(recommended_config_text())
        for workload in selected:
            print(f"{workload.name}: {len(workload.plan)} requests on {workload.engines} simulators", file=sys.stderr)
            results["workloads"][workload.name] = workload.info
            rows = asyncio.run(_replay_rows(args, workload, config))
            results["results"][workload.name] = rows
            results["fidelity"][workload.name] = compare(workload, rows, args.seed)
    results["machine"] = {"cpus": os.cpu_count(), "load_before": load_before, "load_after": load_average()}
    for path in write_all(results, Path(args.out), _command(args), plots=not args.no_plots):
        print(f"wrote {path}")
    print(f"{len(selected)} workloads x {len(results['policies'])} rows in {time.perf_counter() - started:.0f}s wall")
    failed = [
        f"{w}/{r}" for w, rows in results["results"].items() for r, m in rows.items() if m["error"] or m["errors"]
    ]
    if failed:
        print(f"rows with errors: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
