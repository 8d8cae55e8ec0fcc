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
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from kvroute.bench.demo import MODEL, SIM_ARGS
from kvroute.bench.live.cpu import session_cpu_seconds
from kvroute.bench.live.routers import (
    DYNAMO,
    PEERS,
    RouterSite,
    RouterUnavailable,
    router_processes,
    version,
    wait_ready,
)
from kvroute.bench.live.servers import ServerCounters, read_counters
from kvroute.bench.loadgen import Outcome, PlannedRequest, run_open_loop, send
from kvroute.bench.processes import ManagedProcess, ProcessGroup, simulator
from kvroute.simulator.tokenizer import Tokenizer

DIRECT = "direct"
PEER_COUNTERS = ("vllm_router_kv_routing_inputs_total", "vllm_router_policy_decisions_total", "smg_worker_selection")


@dataclass(frozen=True)
class Fleet:
    hosts: tuple[str, ...]
    port: int
    sim_args: tuple[str, ...] = SIM_ARGS
    engine_args: tuple[tuple[str, ...], ...] = ()  # per host, in place of `sim_args` (a replayed workload's)
    kv_events_port: int | None = None  # each simulator publishes its KV events on tcp://<its host>:<this port>

    def argv(self, index: int) -> tuple[str, ...]:
        """The `kvroute sim serve` flags of simulator `index` (after its address)."""
        args = self.engine_args[index] if self.engine_args else self.sim_args
        if self.kv_events_port is not None:
            args = (*args, "--kv-events-endpoint", self.kv_events[index])
        return args

    @property
    def kv_events(self) -> list[str]:
        return [f"tcp://{host}:{self.kv_events_port}" for host in self.hosts]

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
    servers: list[ServerCounters] = field(default_factory=list)  # what each simulator counted over the trace
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


async def run_probe(urls: Sequence[str], count: int, timeout: float, name: str = DIRECT) -> list[Outcome]:
    """`count` requests one after another, round-robin over `urls` (as router `name` takes them)."""
    outcomes = []
    plan = plan_for(name, [PlannedRequest(at=0.0, body=probe_body(i)) for i in range(count)])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for i, planned in enumerate(plan):
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


def plan_for(name: str, plan: Sequence[PlannedRequest]) -> list[PlannedRequest]:
    """The plan as router `name` gets it: Dynamo's frontend takes the prompt as the simulator's token ids (its
    own tokenizer is not the simulator's), so that every engine sees the same tokens under every router."""
    if name not in DYNAMO:
        return list(plan)
    tokenizer = Tokenizer()
    return [
        PlannedRequest(p.at, {**p.body, "prompt": tokenizer.encode(p.body["prompt"])}, p.path)
        if isinstance(p.body.get("prompt"), str)
        else p
        for p in plan
    ]


async def _start_router(
    name: str, fleet: Fleet, site: RouterSite, config: Path | None, workdir: Path, timeout: float
) -> list[ManagedProcess]:
    processes = router_processes(
        name, site, fleet.workers, config=config, kv_events=fleet.kv_events if name in DYNAMO else (), workdir=workdir
    )
    started = time.monotonic()
    try:
        for process in processes:
            process.start()
        await wait_ready(name, processes[-1], site, len(fleet.hosts), timeout)
    except BaseException:
        for process in reversed(processes):
            process.stop()
        raise
    _log(f"{name}: ready in {time.monotonic() - started:.1f}s")
    return processes


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
    group = ProcessGroup([simulator(host, fleet.port, *fleet.argv(i)) for i, host in enumerate(fleet.hosts)])
    processes: list[ManagedProcess] = []
    workdir = tempfile.TemporaryDirectory(prefix=f"kvroute-live-{name}-")
    try:
        _log(f"{name}: starting {len(fleet.hosts)} simulators")
        await group.start(phases.start_timeout)
        urls = fleet.urls
        if name != DIRECT:
            processes = await _start_router(name, fleet, site, config, Path(workdir.name), phases.start_timeout)
            urls = [site.base_url]
        router = processes[-1] if processes else None
        await run_trace(urls, plan_for(name, _warmup_plan(phases.warmup, seed)), phases.timeout)
        sid = router.popen.pid if router is not None and router.popen is not None else None
        before = session_cpu_seconds(sid) if sid is not None else 0.0
        started = time.perf_counter()
        row.probe = await run_probe(urls, phases.probe, phases.timeout, name)
        row.probe_wall = time.perf_counter() - started
        if sid is not None:
            row.probe_cpu = session_cpu_seconds(sid) - before
            before = session_cpu_seconds(sid)
            await asyncio.sleep(phases.idle)
            row.idle_cpu = (session_cpu_seconds(sid) - before) / phases.idle
        _log(f"{name}: trace of {len(plan)} requests over {plan[-1].at if plan else 0:.0f}s")
        counted = await read_counters(fleet.urls)
        before = session_cpu_seconds(sid) if sid is not None else 0.0
        started = time.perf_counter()
        row.trace = await run_trace(urls, plan_for(name, plan), phases.timeout)
        row.trace_wall = time.perf_counter() - started
        row.makespan = row.trace_wall - (plan[0].at if plan else 0.0)
        if sid is not None:
            row.router_cpu = session_cpu_seconds(sid) - before
        row.servers = [end - start for end, start in zip(await read_counters(fleet.urls), counted, strict=True)]
        if name in PEERS:
            row.counters = await peer_counters(site)
    except (RouterUnavailable, RuntimeError, TimeoutError, OSError, aiohttp.ClientError) as exc:
        row.error = f"{type(exc).__name__}: {exc}"
        _log(f"{name}: failed: {row.error}")
    finally:
        try:
            for process in reversed(processes):
                process.stop()
        finally:
            group.stop()
            workdir.cleanup()
    return row
