"""Proxy requests/s and CPU per request: each router in front of fast backends, closed loop, 1 KB bodies.

`backends` instant model servers (`backend`) listen on 127.0.0.2 and up. Each router is started fresh (see
`kvroute.bench.live.routers`; kvroute with the recommended configuration), made ready, left idle for `idle`
seconds (its background CPU: metrics scraping, health checks), warmed up with `warmup` requests at concurrency
32, then measured at each concurrency of `concurrencies`: `requests` non-streaming completions, 1 KB each, from
a low-overhead client (`httpload`). The router's CPU time over a run is read from /proc (every process and thread
of its session), so CPU µs per request does not depend on what else the machine was doing; requests/s and
latency do, since the client, the backends and the router share the machine. The `direct` row is the client
against one backend, without a router.

The prompts share their first ~900 characters and differ after, so cache-aware routers see prefix hits and
still hash, match and record every request.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from kvroute.bench.live.cpu import session_cpu_seconds
from kvroute.bench.live.routers import KVROUTE, RouterSite, RouterUnavailable, router_process, version, wait_ready
from kvroute.bench.overhead.httpload import LoadResult, post, run_load
from kvroute.bench.processes import ManagedProcess, ProcessGroup, loopback

DIRECT = "direct"
BODY_BYTES = 1024
MODEL = "bench-model"


@dataclass(frozen=True)
class ProxyRun:
    name: str
    version: str
    concurrency: int
    requests: int
    errors: int
    requests_per_s: float
    p50_us: float
    p99_us: float
    cpu_us_per_request: float | None  # the router's, None for direct
    cpu_percent: float | None  # the router's CPU over the run, % of one core
    idle_cpu_percent: float | None
    error: str | None = None
    processes: int = 1  # kvroute's router workers (`--workers`)


def backend(host: str, port: int) -> ManagedProcess:
    argv = [sys.executable, "-m", "kvroute.bench.overhead.backend", "--host", loopback(host), "--port", str(port)]
    return ManagedProcess(f"backend-{host}-{port}", argv, f"http://{host}:{port}/health")


def bodies(count: int, size: int = BODY_BYTES) -> list[bytes]:
    """`count` completion bodies of exactly `size` bytes, sharing all but the end of their prompts."""
    shared = ("You are a helpful assistant. Answer briefly and precisely. " * 20)[:900]
    result = []
    for i in range(count):
        body = {"model": MODEL, "prompt": f"{shared} Question {i:06d}: ", "max_tokens": 16, "temperature": 0}
        pad = size - len(json.dumps(body).encode())
        if pad < 0:
            raise ValueError(f"bodies need at least {size - pad} bytes")
        body["prompt"] = str(body["prompt"]) + "x" * pad
        result.append(json.dumps(body).encode())
    return result


def _percentile_us(values: Sequence[float], q: int) -> float:
    if len(values) < 2:
        return values[0] * 1e6 if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1e6


def _run(
    name: str,
    concurrency: int,
    load: LoadResult,
    cpu: float | None,
    idle: float | None,
    release: str,
    processes: int = 1,
) -> ProxyRun:
    answered = len(load.latencies)
    return ProxyRun(
        name=name,
        version=release,
        concurrency=concurrency,
        requests=answered + load.errors,
        errors=load.errors,
        requests_per_s=load.requests_per_s,
        p50_us=_percentile_us(load.latencies, 50),
        p99_us=_percentile_us(load.latencies, 99),
        cpu_us_per_request=cpu * 1e6 / answered if cpu is not None and answered else None,
        cpu_percent=cpu * 100 / load.elapsed if cpu is not None and load.elapsed else None,
        idle_cpu_percent=idle,
        error=load.first_error,
        processes=processes,
    )


@dataclass(frozen=True)
class ProxySettings:
    routers: tuple[str, ...]
    backends: int = 4
    backend_port: int = 18400
    router_host: str = "127.0.0.1"
    router_port: int = 18480
    concurrencies: tuple[int, ...] = (1, 32)
    requests: tuple[int, ...] = (2000, 10000)  # per concurrency, in the same order
    warmup: int = 500
    idle: float = 2.0
    start_timeout: float = 60.0
    kvroute_workers: tuple[int, ...] = (1,)  # kvroute is measured once per value of `--workers`


async def _measure_router(
    name: str,
    site: RouterSite,
    workers: list[str],
    payloads: list[bytes],
    settings: ProxySettings,
    config: Path,
    processes: int = 1,
) -> list[ProxyRun]:
    release = version(name)
    process: ManagedProcess | None = None
    try:
        process = router_process(name, site, workers, config, processes)
        process.start()
        await wait_ready(name, process, site, len(workers), settings.start_timeout)
        if processes > 1:
            await wait_workers(site, processes, settings.start_timeout)
        assert process.popen is not None
        pid = process.popen.pid
        before = session_cpu_seconds(pid)
        await asyncio.sleep(settings.idle)
        idle = (session_cpu_seconds(pid) - before) * 100 / settings.idle
        await run_load(site.host, site.port, payloads, total=settings.warmup, concurrency=32)
        runs = []
        for concurrency, total in zip(settings.concurrencies, settings.requests, strict=True):
            before = session_cpu_seconds(pid)
            load = await run_load(site.host, site.port, payloads, total=total, concurrency=concurrency)
            cpu = session_cpu_seconds(pid) - before
            runs.append(_run(name, concurrency, load, cpu, idle, release, processes))
        return runs
    except (RouterUnavailable, RuntimeError, TimeoutError, OSError) as exc:
        nan = float("nan")
        error = f"{type(exc).__name__}: {exc}"
        return [ProxyRun(name, release, 0, 0, 0, nan, nan, nan, None, None, None, error, processes)]
    finally:
        if process is not None:
            process.stop()


async def run_proxy(settings: ProxySettings, config: Path) -> list[ProxyRun]:
    hosts = [f"127.0.0.{i}" for i in range(2, 2 + settings.backends)]
    workers = [f"{host}:{settings.backend_port}" for host in hosts]
    group = ProcessGroup([backend(host, settings.backend_port) for host in hosts])
    runs: list[ProxyRun] = []
    async with group:
        payloads = [post(hosts[0], settings.backend_port, "/v1/completions", b) for b in bodies(1000)]
        await run_load(hosts[0], settings.backend_port, payloads, total=settings.warmup, concurrency=32)
        for concurrency, total in zip(settings.concurrencies, settings.requests, strict=True):
            load = await run_load(hosts[0], settings.backend_port, payloads, total=total, concurrency=concurrency)
            runs.append(_run(DIRECT, concurrency, load, None, None, ""))
        cases = [
            (name, processes)
            for name in settings.routers
            for processes in (settings.kvroute_workers if name == KVROUTE else (1,))
        ]
        for index, (name, processes) in enumerate(cases):
            site = RouterSite(settings.router_host, settings.router_port + index, settings.router_port + 10 + index)
            payloads = [post(site.host, site.port, "/v1/completions", b) for b in bodies(1000)]
            started = time.monotonic()
            runs += await _measure_router(name, site, workers, payloads, settings, config, processes)
            label = name if processes == 1 else f"{name} --workers {processes}"
            print(f"{label}: measured in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return runs


async def wait_workers(site: RouterSite, processes: int, timeout: float) -> None:
    """Until kvroute's merged metrics page counts `processes` workers (each worker answers on the shared port)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{site.base_url}/metrics") as response:
                    if f"kvroute_router_workers {processes:.1f}" in await response.text():
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"kvroute did not run {processes} workers within {timeout:g}s")
