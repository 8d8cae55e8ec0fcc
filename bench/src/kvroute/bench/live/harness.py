"""One row of the live benchmark: a fresh simulator fleet, one router in front of it (or none), three phases.

For every row the fleet is started anew, so each router meets cold KV caches. Then:

1. warm-up: `warmup` requests with prompts unrelated to the trace, all sent at once (a sequential warm-up would
   teach cache-aware peers to send everything to one server);
2. probe: `probe` small requests (a 256-character prompt, one output token) one after another, so TTFT is the
   server's idle response time plus whatever the path adds. `direct` sends them to the servers round-robin;
   the difference between a router's probe TTFT and direct's is the latency the router adds, and the router's
   CPU time over the probe is what one such request costs it;
3. idle: `idle` seconds without traffic, to measure the router's background CPU (metrics scraping, health
   checks);
4. trace: the shared-prefix trace, open loop, through the router (`direct`: round-robin from the client). The
   router's CPU time over the trace is read from /proc. A peer's counters of how it routed (from its Prometheus
   port, `PEER_COUNTERS`) are kept with the row: e.g. whether vllm-router got the prompt's tokens by render.

Every process is stopped by PID when the row ends, also when it fails or is interrupted. A router that cannot
start gives a row with its error instead of numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from kvroute.bench.demo import MODEL, SIM_ARGS
from kvroute.bench.live.cpu import session_cpu_seconds
from kvroute.bench.live.routers import PEERS, RouterSite, RouterUnavailable, router_process, version, wait_ready
from kvroute.bench.loadgen import Outcome, PlannedRequest, run_open_loop, send
from kvroute.bench.processes import ManagedProcess, ProcessGroup, simulator

DIRECT = "direct"
PEER_COUNTERS = ("vllm_router_kv_routing_inputs_total", "vllm_router_policy_decisions_total", "smg_worker_selection")


@dataclass(frozen=True)
class Fleet:
    hosts: tuple[str, ...]
    port: int
    sim_args: tuple[str, ...] = SIM_ARGS

    @property
    def workers(self) -> list[str]:
        return [f"{host}:{self.port}" for host in self.hosts]

    @property
    def urls(self) -> list[str]:
        return [f"http://{worker}" for worker in self.workers]

    def pod(self, index: int) -> str:
        """The simulator's `x-inference-pod` header."""
        return f"sim-{self.hosts[index]}-{self.port}"


@dataclass(frozen=True)
class Phases:
    warmup: int = 32
    probe: int = 100
    idle: float = 3.0  # seconds
    timeout: float = 60.0  # per request
    start_timeout: float = 60.0


@dataclass
class RowResult:
    name: str
    version: str = ""
    trace: list[Outcome] = field(default_factory=list)
    probe: list[Outcome] = field(default_factory=list)
    makespan: float = 0.0  # from the first arrival to the last completion, seconds
    trace_wall: float = 0.0  # from the start of the trace to the last completion, seconds
    router_cpu: float | None = None  # CPU seconds of the router over the trace
    probe_cpu: float | None = None  # CPU seconds of the router over the probe
    probe_wall: float = 0.0
    idle_cpu: float | None = None  # CPU seconds per second of the router without traffic
    counters: dict[str, float] = field(default_factory=dict)  # a peer's PEER_COUNTERS after the trace
    error: str | None = None


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _warmup_plan(count: int, seed: int) -> list[PlannedRequest]:
    rng = random.Random(f"warmup/{seed}")
    alphabet = string.ascii_uppercase + string.digits
    return [
        PlannedRequest(at=0.0, body={"model": MODEL, "prompt": "".join(rng.choices(alphabet, k=2000)), "max_tokens": 4})
        for _ in range(count)
    ]


def probe_body(index: int) -> dict[str, object]:
    prompt = f"probe {index:06d} " + "the quick brown fox jumps over the lazy dog " * 6
    return {"model": MODEL, "prompt": prompt[:256], "max_tokens": 1}


async def run_trace(urls: Sequence[str], plan: Sequence[PlannedRequest], timeout: float) -> list[Outcome]:
    """The plan through one URL, or spread round-robin over several (the client-side policy of `direct`)."""
    if len(urls) == 1:
        return await run_open_loop(urls[0], plan, timeout=timeout)
    shares = [list(plan[i :: len(urls)]) for i in range(len(urls))]
    answers = await asyncio.gather(
        *(run_open_loop(url, share, timeout=timeout) for url, share in zip(urls, shares, strict=True))
    )
    outcomes: list[Outcome] = [Outcome(status=0)] * len(plan)
    for i, answer in enumerate(answers):
        outcomes[i :: len(urls)] = answer
    return outcomes


async def run_probe(urls: Sequence[str], count: int, timeout: float) -> list[Outcome]:
    """`count` requests one after another, round-robin over `urls`."""
    outcomes = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for i in range(count):
            planned = PlannedRequest(at=0.0, body=probe_body(i))
            outcomes.append(await send(session, urls[i % len(urls)], planned, timeout))
    return outcomes


async def peer_counters(site: RouterSite) -> dict[str, float]:
    """The samples of `PEER_COUNTERS` on the router's Prometheus port (empty if it does not answer)."""
    url = f"http://{site.host}:{site.metrics_port}/metrics"
    try:
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(5)) as answer:
            text = await answer.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    counters = {}
    for line in text.splitlines():
        if line.startswith(PEER_COUNTERS):
            sample, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                counters[sample] = float(value)
    return counters


async def run_row(
    name: str,
    fleet: Fleet,
    site: RouterSite,
    plan: Sequence[PlannedRequest],
    phases: Phases,
    *,
    config: Path | None = None,
    seed: int = 1,
) -> RowResult:
    row = RowResult(name, version=version(name) if name != DIRECT else "")
    group = ProcessGroup([simulator(host, fleet.port, *fleet.sim_args) for host in fleet.hosts])
    router: ManagedProcess | None = None
    try:
        _log(f"{name}: starting {len(fleet.hosts)} simulators")
        await group.start(phases.start_timeout)
        urls = fleet.urls
        if name != DIRECT:
            router = router_process(name, site, fleet.workers, config)
            started = time.monotonic()
            router.start()
            await wait_ready(router, site, len(fleet.hosts), phases.start_timeout)
            _log(f"{name}: ready in {time.monotonic() - started:.1f}s")
            urls = [site.base_url]
        await run_trace(urls, _warmup_plan(phases.warmup, seed), phases.timeout)
        sid = router.popen.pid if router is not None and router.popen is not None else None
        before = session_cpu_seconds(sid) if sid is not None else 0.0
        started = time.perf_counter()
        row.probe = await run_probe(urls, phases.probe, phases.timeout)
        row.probe_wall = time.perf_counter() - started
        if sid is not None:
            row.probe_cpu = session_cpu_seconds(sid) - before
            before = session_cpu_seconds(sid)
            await asyncio.sleep(phases.idle)
            row.idle_cpu = (session_cpu_seconds(sid) - before) / phases.idle
        _log(f"{name}: trace of {len(plan)} requests over {plan[-1].at if plan else 0:.0f}s")
        before = session_cpu_seconds(sid) if sid is not None else 0.0
        started = time.perf_counter()
        row.trace = await run_trace(urls, plan, phases.timeout)
        row.trace_wall = time.perf_counter() - started
        row.makespan = row.trace_wall - (plan[0].at if plan else 0.0)
        if sid is not None:
            row.router_cpu = session_cpu_seconds(sid) - before
        if name in PEERS:
            row.counters = await peer_counters(site)
    except (RouterUnavailable, RuntimeError, TimeoutError, OSError, aiohttp.ClientError) as exc:
        row.error = f"{type(exc).__name__}: {exc}"
        _log(f"{name}: failed: {row.error}")
    finally:
        try:
            if router is not None:
                router.stop()
        finally:
            group.stop()
    return row
