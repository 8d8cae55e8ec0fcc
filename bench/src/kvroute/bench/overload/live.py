"""The overload scenario on real processes: `kvroute sim serve` engines behind a `kvroute router` proxy.

One run per mode, each on a fresh fleet: one simulator per engine on its own loopback address
(`--max-num-seqs` as the scenario, `--time-scale` `time_scale`, so the whole run is that many times slower than
the modelled GPU and the machine keeps up), the router (`--mode proxy`) with the mode's configuration, then the
scenario's requests open loop at `arrival x time_scale`, each a streamed completion carrying its objective and
fairness-id headers. Latencies are reported in modelled seconds (wall / `time_scale`).

While the requests run, the router's resident memory (VmRSS) is sampled every `rss_interval` seconds: with
flow control the queue is bounded by its limits and TTL, so the RSS should plateau however long the overload
lasts. Every process is stopped by PID when the run ends, also on failure.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from kvroute.bench.demo import MODEL
from kvroute.bench.live.routers import KVROUTE, RouterSite, router_process
from kvroute.bench.loadgen import Outcome as ClientOutcome
from kvroute.bench.loadgen import PlannedRequest, run_open_loop
from kvroute.bench.overload.metrics import Outcome
from kvroute.bench.overload.scenario import Scenario, TenantRequest
from kvroute.bench.processes import ProcessGroup, simulator

SIM_PORT = 8000


@dataclass(frozen=True)
class LiveSettings:
    time_scale: float = 4.0
    first_host: int = 61  # simulators on 127.0.0.<first_host + i>; the router on 127.0.0.<first_host - 1>
    router_port: int = 8300
    timeout: float = 600.0  # per request, wall seconds
    rss_interval: float = 1.0


@dataclass
class LiveRun:
    outcomes: list[Outcome]
    rss_mib: list[tuple[float, float]] = field(default_factory=list)  # (wall seconds since the start, MiB)
    errors: dict[str, int] = field(default_factory=dict)  # client-side errors by kind (connection, timeout)


def plan(requests: Sequence[TenantRequest], time_scale: float) -> list[PlannedRequest]:
    return [
        PlannedRequest(
            at=r.request.arrival_time * time_scale,
            body={"model": MODEL, "prompt": r.request.prompt, "max_tokens": r.request.max_tokens},
            headers=r.headers,
        )
        for r in requests
    ]


def outcome(request: TenantRequest, answer: ClientOutcome, at: float, time_scale: float) -> Outcome:
    completed = answer.status == 200 and answer.error is None and answer.e2e is not None
    status = None if completed or answer.status == 0 else answer.status
    finished = (at + answer.e2e) / time_scale if answer.e2e is not None else None
    ttft = answer.ttft / time_scale if answer.ttft is not None else None
    return Outcome(request.tenant, request.objective, completed, status, ttft, None, finished)


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def run(
    scenario: Scenario, config_text: str, requests: Sequence[TenantRequest], settings: LiveSettings
) -> LiveRun:
    hosts = [f"127.0.0.{settings.first_host + i}" for i in range(scenario.engines)]
    args = ("--model", MODEL, "--max-num-seqs", str(scenario.max_num_seqs), "--time-scale", str(settings.time_scale))
    group = ProcessGroup([simulator(host, SIM_PORT, *args) for host in hosts])
    site = RouterSite(f"127.0.0.{settings.first_host - 1}", settings.router_port, settings.router_port + 1)
    with tempfile.TemporaryDirectory(prefix="kvroute-overload-") as workdir:
        config = Path(workdir) / "config.yaml"
        config.write_text(config_text)
        router = router_process(KVROUTE, site, [f"{h}:{SIM_PORT}" for h in hosts], config)
        async with group:
            router.start()
            try:
                async with aiohttp.ClientSession() as session:
                    await router.wait_healthy(session, 60.0)
                pid = router.popen.pid if router.popen is not None else 0
                planned = plan(requests, settings.time_scale)
                samples: list[tuple[float, float]] = []
                started = time.perf_counter()
                sampler = asyncio.create_task(_sample(pid, samples, started, settings.rss_interval))
                try:
                    answers = await run_open_loop(site.base_url, planned, timeout=settings.timeout)
                finally:
                    sampler.cancel()
                if router.popen is not None and router.popen.poll() is not None:
                    raise RuntimeError(f"the router exited with {router.popen.returncode}:\n{router.output_tail()}")
            finally:
                router.stop()
    run_result = LiveRun(
        [outcome(r, a, p.at, settings.time_scale) for r, a, p in zip(requests, answers, planned, strict=True)],
        samples,
    )
    for answer in answers:
        if answer.error is not None and answer.status == 0:
            kind = answer.error.split(":", 1)[0]
            run_result.errors[kind] = run_result.errors.get(kind, 0) + 1
    return run_result


async def _sample(pid: int, samples: list[tuple[float, float]], started: float, interval: float) -> None:
    while True:
        value = rss_mib(pid)
        if value is not None:
            samples.append((round(time.perf_counter() - started, 3), round(value, 1)))
        await asyncio.sleep(interval)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
