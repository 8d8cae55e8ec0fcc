"""Retries, timeouts and circuit breakers against real simulators: a hung pod, failing pods, a pod killed.

Every load is bounded in count and time (`run_load`); the proxies run in-process so the tests can read their
breakers' metrics. Timeouts and breaker durations are shortened so that each test takes seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from typing import Any

import pytest

from kvroute.router.framework import Endpoint
from kvroute.router.plugins.registry import REGISTRY
from kvroute.router.proxy.upstream import RetryPolicy, UpstreamSettings
from kvroute.router.requestcontrol.breaker import CLOSED, BreakerSettings
from tests.support import eventually

from .conftest import ProxyServer, ProxySettings
from .test_load_integration import FAILOVER_CONFIG, MODEL, Result, completion, run_load

pytestmark = pytest.mark.integration

FAST = ("--model", MODEL, "--time-scale", "0.05")


def streamed(i: int) -> dict[str, Any]:
    return {**completion(i, 24), "stream": True}


async def _proxy(
    endpoints: list[Endpoint], host: str, upstream: UpstreamSettings, breaker: BreakerSettings
) -> ProxyServer:
    settings = ProxySettings(
        host=host,
        port=0,
        scrape_interval=0.1,
        upstream_idle_timeout=upstream.idle_timeout,
        upstream=upstream,
        breaker=breaker,
    )
    server = ProxyServer(endpoints, REGISTRY, settings, config_text=FAILOVER_CONFIG)
    await server.start()
    return server


def _sample(server: ProxyServer, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


def _ejections(server: ProxyServer, endpoint_id: str) -> float:
    total = 0.0
    for metric in server.metrics.registry.collect():
        if metric.name == "kvroute_endpoint_ejections":
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels.get("endpoint") == endpoint_id:
                    total += sample.value
    return total


async def test_a_hung_pod_is_ejected_its_requests_move_on_and_it_is_readmitted_after_sigcont(sim_fleet: Any) -> None:
    sims = [sim_fleet.start(*FAST) for _ in range(3)]
    victim = sims[0]
    endpoints = [Endpoint.create(sim.host, sim.port) for sim in sims]
    upstream = UpstreamSettings(first_byte_timeout=0.5, idle_timeout=2.0)
    server = await _proxy(endpoints, "127.0.5.2", upstream, BreakerSettings(failure_threshold=3, open_duration=1.0))
    victim_id = endpoints[0].id
    try:
        before = await run_load(server.base_url, 64, 16, streamed)
        assert Counter(pod for _, pod in before)[victim.pod_name] > 0

        os.kill(victim.pid, signal.SIGSTOP)
        try:
            stopped = await run_load(server.base_url, 400, 16, streamed, within=30)
            ejected = _ejections(server, victim_id)
        finally:
            os.kill(victim.pid, signal.SIGCONT)

        def readmitted() -> bool:
            return _sample(server, "kvroute_endpoint_breaker_state", endpoint=victim_id) == CLOSED

        after: list[Result] = []
        while not readmitted():
            after += await run_load(server.base_url, 32, 16, streamed, within=30)
            await asyncio.sleep(0.2)
            assert len(after) < 2000, "the hung pod was never readmitted"
        after += await run_load(server.base_url, 64, 16, streamed)

        assert [r for r in stopped if r[0] != 200] == []  # no client saw an error before the first byte
        assert ejected >= 1
        served_while_stopped = Counter(pod for _, pod in stopped)
        assert served_while_stopped[victim.pod_name] == 0, served_while_stopped
        assert _sample(server, "kvroute_upstream_retries_total", reason="first_byte_timeout") >= 1
        assert Counter(pod for _, pod in after)[victim.pod_name] > 0
    finally:
        await server.stop()


async def test_failing_pods_cost_no_request_and_their_breakers_close_once_they_recover(sim_fleet: Any) -> None:
    healthy = [sim_fleet.start(*FAST) for _ in range(2)]
    erroring = sim_fleet.start(*FAST, "--failure-injection-rate", "100", "--failure-types", "server_error")
    limited = sim_fleet.start(*FAST, "--failure-injection-rate", "100", "--failure-types", "rate_limit")
    sims = [*healthy, erroring, limited]
    endpoints = [Endpoint.create(sim.host, sim.port) for sim in sims]
    retry = RetryPolicy(statuses=frozenset({429, 500, 502, 503, 504}))
    upstream = UpstreamSettings(retry=retry)
    server = await _proxy(endpoints, "127.0.5.3", upstream, BreakerSettings(open_duration=0.5))
    failing = {erroring: endpoints[2].id, limited: endpoints[3].id}
    try:
        results = await run_load(server.base_url, 600, 16, completion)

        assert [r for r in results if r[0] != 200] == []
        served = Counter(pod for _, pod in results)
        assert served[erroring.pod_name] == served[limited.pod_name] == 0, served
        for endpoint_id in failing.values():
            assert _ejections(server, endpoint_id) >= 1
        assert _sample(server, "kvroute_upstream_retries_total", reason="status_500") >= 1
        assert _sample(server, "kvroute_upstream_retries_total", reason="status_429") >= 1

        for sim in failing:  # the same addresses, healthy now
            sim.stop()
            sim_fleet.start(*FAST, host=sim.host, port=sim.port)

        def closed() -> bool:
            return all(
                _sample(server, "kvroute_endpoint_breaker_state", endpoint=e) == CLOSED for e in failing.values()
            )

        recovered: list[Result] = []
        while not closed():
            recovered += await run_load(server.base_url, 32, 8, completion)
            await asyncio.sleep(0.1)
            assert len(recovered) < 2000, "the breakers never closed"
        recovered += await run_load(server.base_url, 200, 16, completion)
        assert [r for r in recovered if r[0] != 200] == []
        served = Counter(pod for _, pod in recovered)
        assert served[erroring.pod_name] > 0 and served[limited.pod_name] > 0, served
    finally:
        await server.stop()


async def test_a_pod_killed_under_streaming_load_costs_no_request_before_the_first_byte(sim_fleet: Any) -> None:
    sims = [sim_fleet.start(*FAST) for _ in range(3)]
    endpoints = [Endpoint.create(sim.host, sim.port) for sim in sims]
    server = await _proxy(endpoints, "127.0.5.4", UpstreamSettings(), BreakerSettings())
    try:
        done: list[Result] = []
        load = asyncio.create_task(run_load(server.base_url, 400, 16, streamed, done=done))
        await eventually(lambda: len(done) >= 50, timeout=20, interval=0.01)
        os.kill(sims[1].pid, signal.SIGKILL)
        results = await load

        assert [r for r in results if r[0] != 200] == []
        assert _ejections(server, endpoints[1].id) >= 1
    finally:
        await server.stop()
