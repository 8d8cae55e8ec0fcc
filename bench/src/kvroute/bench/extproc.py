"""`kvroute bench extproc`: requests/s and added latency through Envoy + kvroute (ext_proc) against Envoy alone.

Every cell starts its own processes on loopback and stops them by PID: one `streaming_backend` process serving a
pool of four endpoints (127.0.0.x), `kvroute router --mode ext-proc` (TLS, the built-in configuration, the
response mode of the cell) and Envoy from docs/envoy/kvroute-gateway.yaml. The baseline is the same gateway
without the ext_proc filter: Envoy's round-robin cluster over the same pool.

A cell runs `requests` requests from a closed-loop client with `concurrency` keep-alive connections
(`overhead.httpload`) after a warm-up, and reports requests/s, latency percentiles, and the CPU the router and
Envoy used per request (from /proc). The added latency is a cell's p50 minus the baseline's at the same
concurrency, body and answer. Answers are JSON, or SSE streams of `--chunks` events 2 ms apart (a streamed cell's
latency is mostly those 2 ms gaps; its throughput is what matters).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvroute.bench import envoy, extproc_driver
from kvroute.bench.overhead.httpload import LoadResult, post, run_load, run_paced
from kvroute.bench.processes import ManagedProcess, ProcessGroup, kvroute_command, loopback

HOST = "127.0.0.1"
POOL = [(f"127.0.7.{i}", 18600) for i in range(2, 6)]
ROUTER_PORTS = (19702, 19703, 19790)  # ext_proc, health, metrics
ENVOY_PORTS = (19700, 19701)  # listener, admin
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1


@dataclass(frozen=True)
class Cell:
    name: str
    gateway: str  # "envoy" (round-robin baseline) or "kvroute-full" / "kvroute-light"
    body_bytes: int
    chunks: int  # 0: JSON answers
    concurrency: int  # connections of the closed loop; with a rate, the most in flight
    request_body_mode: str = "FULL_DUPLEX_STREAMED"
    rate: float = 0.0  # > 0: an open loop of this many requests/s (Poisson arrivals) instead of a closed loop


@dataclass
class CellResult:
    cell: Cell
    requests: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    router_cpu_us: float | None  # router process CPU per request
    envoy_cpu_us: float
    other_cpu: float  # cores busy with processes outside the benchmark while it ran (a noisy machine)
    first_error: str | None = None


def _body(size: int, index: int) -> bytes:
    """A completion request of about `size` bytes; requests share a long prefix, as chat turns do."""
    head = {"model": "bench-model", "max_tokens": 16, "prompt": ""}
    filler = size - len(json.dumps(head)) - 16
    prompt = ("You are a helpful assistant. " * (filler // 29 + 1))[: max(0, filler)] + f" #{index:08d}"
    return json.dumps({**head, "prompt": prompt}).encode()


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields) / CLOCK_TICKS
    return total - (fields[3] + fields[4]) / CLOCK_TICKS, total


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _backend(chunks: int) -> ManagedProcess:
    argv = [sys.executable, "-m", "kvroute.bench.streaming_backend", "--chunks", str(chunks)]
    for host, port in POOL:
        argv += ["--listen", f"{loopback(host)}:{port}"]
    host, port = POOL[0]
    return ManagedProcess("backend", argv, f"http://{host}:{port}/health")


def _router(light: bool, *extra: str) -> ManagedProcess:
    grpc, health, metrics = ROUTER_PORTS
    endpoints = ",".join(f"{h}:{p}" for h, p in POOL)
    argv = kvroute_command("router", "--mode", "ext-proc", "--endpoints", endpoints, "--host", HOST)
    argv += ["--grpc-port", str(grpc), "--grpc-health-port", str(health), "--metrics-port", str(metrics)]
    argv += ["--response-mode", "light" if light else "full", "--log-level", "warning", *extra]
    return ManagedProcess("router", argv, f"http://{HOST}:{metrics}/metrics")


@dataclass(frozen=True)
class AloneCell:
    """The router alone, driven by `extproc_driver` (no Envoy, plaintext gRPC)."""

    name: str
    light: bool
    body_bytes: int
    chunks: int


@dataclass
class AloneResult:
    cell: AloneCell
    streams_per_s: float
    router_cpu_us: float


ALONE = [
    AloneCell("router alone, light, 8KB, JSON answer", True, 8 * 1024, 0),
    AloneCell("router alone, full, 8KB, JSON answer", False, 8 * 1024, 0),
    AloneCell("router alone, light, 220KB, JSON answer", True, 220 * 1024, 0),
    AloneCell("router alone, full, 8KB, 50-chunk stream", False, 8 * 1024, 50),
]


async def run_alone(cell: AloneCell, requests: int, concurrency: int) -> AloneResult:
    router = _router(cell.light, "--secure-serving=false")
    async with ProcessGroup([_backend(0), router]):
        await asyncio.sleep(0.5)
        assert router.popen is not None
        bodies = [extproc_driver.body(cell.body_bytes - 64)]
        result = await extproc_driver.drive(
            f"{HOST}:{ROUTER_PORTS[0]}",
            router.popen.pid,
            bodies,
            chunks=cell.chunks,
            response_body=not cell.light,
            total=requests,
            concurrency=concurrency,
        )
    return AloneResult(cell, result.streams_per_s, result.router_cpu_us)


def _gateway(cell: Cell) -> envoy.EnvoyProcess:
    port, admin = ENVOY_PORTS
    config = envoy.gateway(
        host=HOST,
        port=port,
        admin_port=admin,
        router=(HOST, ROUTER_PORTS[0]),
        pool=POOL,
        light=cell.gateway == "kvroute-light",
        request_body_mode=cell.request_body_mode,
    )
    if cell.gateway == "envoy":
        envoy.without_ext_proc(config)
    return envoy.EnvoyProcess(HOST, port, admin, config)


async def _load(cell: Cell, bodies: Sequence[bytes], requests: int) -> LoadResult:
    if cell.rate > 0:
        return await run_paced(
            HOST, ENVOY_PORTS[0], bodies, total=requests, rate=cell.rate, max_connections=cell.concurrency
        )
    return await run_load(HOST, ENVOY_PORTS[0], bodies, total=requests, concurrency=cell.concurrency)


async def run_cell(cell: Cell, requests: int, warmup: int) -> CellResult:
    processes = [_backend(cell.chunks)]
    if cell.gateway != "envoy":
        processes.append(_router(cell.gateway == "kvroute-light"))
    async with ProcessGroup(processes):
        await asyncio.sleep(0.5)  # a few metric scrapes: the router is ready
        gateway = _gateway(cell)
        await asyncio.to_thread(gateway.start)
        try:
            bodies = [post(HOST, ENVOY_PORTS[0], "/v1/completions", _body(cell.body_bytes, i)) for i in range(64)]
            await run_load(HOST, ENVOY_PORTS[0], bodies, total=warmup, concurrency=cell.concurrency)
            router = processes[1].popen if len(processes) > 1 else None
            assert gateway.process is not None and processes[0].popen is not None
            ours = [p for p in (gateway.process, router, processes[0].popen) if p is not None]
            cpu = [_cpu_seconds(p.pid) for p in ours]
            machine, own = _machine_busy(), time.process_time()
            result = await _load(cell, bodies, requests)
            busy, total = (after - before for after, before in zip(_machine_busy(), machine, strict=True))
            used = [_cpu_seconds(p.pid) - c for p, c in zip(ours, cpu, strict=True)]
            others = busy - sum(used) - (time.process_time() - own)
        finally:
            gateway.stop()
    done = max(1, len(result.latencies))
    latencies = sorted(result.latencies)
    return CellResult(
        cell=cell,
        requests=len(latencies),
        errors=result.errors,
        requests_per_s=result.requests_per_s,
        p50_ms=statistics.median(latencies) * 1000 if latencies else 0.0,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else 0.0,
        router_cpu_us=used[1] / done * 1e6 if router is not None else None,
        envoy_cpu_us=used[0] / done * 1e6,
        other_cpu=max(0.0, others) / (total / CPUS) if total > 0 else 0.0,
        first_error=result.first_error,
    )


def cells(chunks: int, concurrency: int, moderate: int, rate: float) -> list[Cell]:
    grid: list[Cell] = []
    for body, label in ((8 * 1024, "8KB"), (220 * 1024, "220KB")):
        for gateway in ("envoy", "kvroute-light", "kvroute-full"):
            grid.append(Cell(f"{gateway} {label} json", gateway, body, 0, concurrency))
        grid.append(Cell(f"kvroute-light {label} json buffered", "kvroute-light", body, 0, concurrency, "BUFFERED"))
    for gateway in ("envoy", "kvroute-light", "kvroute-full"):
        grid.append(Cell(f"{gateway} 8KB {chunks}-chunk stream", gateway, 8 * 1024, chunks, concurrency))
        grid.append(Cell(f"{gateway} 8KB json c={moderate}", gateway, 8 * 1024, 0, moderate))
    for gateway in ("envoy", "kvroute-light", "kvroute-full"):
        grid.append(Cell(f"{gateway} 8KB json {rate:g}/s", gateway, 8 * 1024, 0, concurrency, rate=rate))
    return grid


def _kind(cell: Cell) -> tuple[int, int, int, float]:
    """Cells of one kind differ only in the gateway; the added latency is against Envoy alone of the same kind."""
    return cell.body_bytes, cell.chunks, cell.concurrency, cell.rate


def table(results: Sequence[CellResult]) -> str:
    baseline = {_kind(r.cell): r.p50_ms for r in results if r.cell.gateway == "envoy"}
    lines = [
        "| cell | req/s | p50 ms | p99 ms | added p50 ms | router CPU µs/req | Envoy CPU µs/req | other load (cores) "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        base = baseline.get(_kind(r.cell))
        added = "" if base is None or r.cell.gateway == "envoy" else f"{r.p50_ms - base:.2f}"
        router = "" if r.router_cpu_us is None else f"{r.router_cpu_us:.0f}"
        lines.append(
            f"| {r.cell.name} | {r.requests_per_s:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {added} | {router} "
            f"| {r.envoy_cpu_us:.0f} | {r.other_cpu:.2f} | {r.errors} |"
        )
    return "\n".join(lines)


def alone_table(results: Sequence[AloneResult]) -> str:
    lines = ["| router alone | streams/s | router CPU µs/stream |", "|---|---:|---:|"]
    lines += [f"| {r.cell.name} | {r.streams_per_s:.0f} | {r.router_cpu_us:.0f} |" for r in results]
    return "\n".join(lines)


def register(sub: Any) -> None:
    parser = sub.add_parser("extproc", help="ext_proc throughput and added latency through a real Envoy")
    add = parser.add_argument
    add("--requests", type=int, default=3000, help="requests per cell (default 3000)")
    add("--warmup", type=int, default=300, help="requests before measuring (default 300)")
    add("--concurrency", type=int, default=32, help="connections for throughput cells (default 32)")
    add("--moderate", type=int, default=2, help="connections for the latency cells (default 2)")
    add("--rate", type=float, default=300, help="requests/s of the open-loop latency cells (default 300)")
    add("--chunks", type=int, default=50, help="SSE events per streamed answer (default 50)")
    add("--only", metavar="TEXT", help="run only the cells whose name contains TEXT")
    add("--json", metavar="FILE", help="also write the results as JSON")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    grid = [
        c
        for c in cells(args.chunks, args.concurrency, args.moderate, args.rate)
        if not args.only or args.only in c.name
    ]
    results: list[CellResult] = []
    for cell in grid:
        started = time.perf_counter()
        result = asyncio.run(run_cell(cell, args.requests, args.warmup))
        results.append(result)
        print(f"{cell.name}: {result.requests_per_s:.0f} req/s ({time.perf_counter() - started:.0f} s)", flush=True)
    alone = [
        asyncio.run(run_alone(cell, args.requests, args.concurrency))
        for cell in ALONE
        if not args.only or args.only in cell.name
    ]
    print(table(results))
    print()
    print(alone_table(alone))
    if args.json:
        document = {"through_envoy": [asdict(r) for r in results], "router_alone": [asdict(r) for r in alone]}
        Path(args.json).write_text(json.dumps(document, indent=2))
    return 0 if all(r.errors == 0 for r in results) else 1
