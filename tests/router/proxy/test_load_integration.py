"""The proxy under bounded load against real simulators: load skew, an endpoint dying, hot reload.

Every load loop is bounded in count (a fixed number of requests) and in time (`asyncio.wait_for`).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kvroute.router.framework import Endpoint
from kvroute.router.plugins.registry import REGISTRY
from kvroute.router.plugins.scorers.active_blocks import ActiveBlocksScorer
from kvroute.router.plugins.scorers.active_request import ActiveRequestScorer
from tests.support import eventually, free_port

from .conftest import ProxyServer, ProxySettings

pytestmark = pytest.mark.integration

MODEL = "kvroute-test"
FAST = ("--model", MODEL, "--time-scale", "0.05")

LOAD_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: queue-scorer
  - type: active-request-scorer
  - type: max-score-picker
    parameters: {maxNumOfEndpoints: %(fallbacks)d}
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: queue-scorer, weight: %(queue)d}
      - {pluginRef: active-request-scorer, weight: 2}
      - {pluginRef: max-score-picker}
"""

FAILOVER_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: prefix-cache-scorer
  - type: active-request-scorer
  - type: active-blocks-scorer
  - type: max-score-picker
    parameters: {maxNumOfEndpoints: 3}
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: prefix-cache-scorer, weight: 1}
      - {pluginRef: active-request-scorer, weight: 1}
      - {pluginRef: active-blocks-scorer, weight: 1}
      - {pluginRef: max-score-picker}
"""

Result = tuple[int, str]  # status, x-inference-pod (or the error body)


async def run_load(
    url: str,
    count: int,
    concurrency: int,
    body: Callable[[int], dict[str, Any]],
    within: float = 60.0,
    done: list[Result] | None = None,
    stop: asyncio.Event | None = None,
) -> list[Result]:
    """Sends up to `count` requests from `concurrency` workers, stopping early once `stop` is set; fails the test
    after `within` seconds. Results are appended to `done` as they arrive."""
    finished: list[Result] = [] if done is None else done
    indices = iter(range(count))

    async def worker(client: aiohttp.ClientSession) -> None:
        for i in indices:
            if stop is not None and stop.is_set():
                return
            try:
                async with client.post(f"{url}/v1/completions", json=body(i)) as response:
                    text = await response.text()
                    finished.append((response.status, response.headers.get("x-inference-pod", text)))
            except aiohttp.ClientError as exc:
                finished.append((0, repr(exc)))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(concurrency))), within)
    return finished


def completion(i: int, max_tokens: int = 16) -> dict[str, Any]:
    return {"model": MODEL, "prompt": f"request {i}: " + "tell me a long story. " * 20, "max_tokens": max_tokens}


async def test_load_scorers_send_less_to_a_slow_endpoint(
    sim_fleet: Any, routers: Callable[..., Any], spec_of: Callable[..., str], tmp_path: Path
) -> None:
    fast = [sim_fleet.start(*FAST) for _ in range(3)]
    slow = sim_fleet.start("--model", MODEL, "--time-scale", "1.0")
    config = tmp_path / "load.yaml"
    config.write_text(LOAD_CONFIG % {"fallbacks": 1, "queue": 1})
    router = routers(spec_of([*fast, slow]), config=config)

    results = await run_load(router.base_url, 120, 12, completion)

    assert all(status == 200 for status, _ in results), results
    served = Counter(pod for _, pod in results)
    assert served[slow.pod_name] < 120 * 0.25 / 2, served
    assert all(served[sim.pod_name] > served[slow.pod_name] for sim in fast), served


def _scorers(server: ProxyServer) -> tuple[ActiveRequestScorer, ActiveBlocksScorer]:
    plugins = server.holder.current.plugins
    requests, blocks = plugins["active-request-scorer"], plugins["active-blocks-scorer"]
    assert isinstance(requests, ActiveRequestScorer) and isinstance(blocks, ActiveBlocksScorer)
    return requests, blocks


async def test_an_endpoint_killed_under_load_costs_no_request_and_leaks_no_state(
    sim_fleet: Any,
) -> None:
    sims = [sim_fleet.start(*FAST) for _ in range(4)]
    victim = sims[1]
    endpoints = [Endpoint.create(sim.host, sim.port) for sim in sims]
    settings = ProxySettings(host="127.0.5.1", port=0)
    server = ProxyServer(endpoints, REGISTRY, settings, config_text=FAILOVER_CONFIG)
    await server.start()
    try:
        done: list[Result] = []
        load = asyncio.create_task(run_load(server.base_url, 300, 16, lambda i: completion(i, 32), done=done))
        victim_id = f"{victim.host}:{victim.port}"

        def in_flight_on(endpoint_id: str) -> float | None:
            return server.metrics.registry.get_sample_value("kvroute_requests_in_flight", {"endpoint": endpoint_id})

        # The whole load takes well under a second and each endpoint has 0 to 4 requests in flight from one moment
        # to the next: the kill waits for a moment with some on the victim, and follows the reading at once.
        await eventually(lambda: len(done) >= 60 and (in_flight_on(victim_id) or 0) > 0, timeout=20, interval=0.01)
        in_flight_on_victim = in_flight_on(victim_id)
        os.kill(victim.pid, signal.SIGKILL)
        completed_at_kill = len(done)
        results = await load

        assert [r for r in results if r[0] != 200] == []
        assert in_flight_on_victim is not None and in_flight_on_victim > 0
        assert completed_at_kill < 200, "the load ended before the kill could matter"
        served = Counter(pod for _, pod in results)
        assert served[victim.pod_name] > 0, served
        requests, blocks = _scorers(server)
        for endpoint in endpoints:
            gauge = server.metrics.registry.get_sample_value("kvroute_requests_in_flight", {"endpoint": endpoint.id})
            assert gauge in (None, 0.0), (endpoint.id, gauge)
            assert requests.in_flight(endpoint.id) == 0
            assert (blocks.active_blocks(endpoint.id), blocks.prefilling_blocks(endpoint.id)) == (0, 0)
        assert (
            server.metrics.registry.get_sample_value("kvroute_requests_total", {"api": "completions", "code": "200"})
            == 300
        )
    finally:
        await server.stop()


async def test_config_reloads_under_load_fail_no_request(
    sim_fleet: Any, routers: Callable[..., Any], spec_of: Callable[..., str], tmp_path: Path
) -> None:
    sims = [sim_fleet.start(*FAST) for _ in range(3)]
    config = tmp_path / "router.yaml"
    config.write_text(LOAD_CONFIG % {"fallbacks": 2, "queue": 1})
    admin_port = free_port()
    router = routers(spec_of(sims), "--admin-port", str(admin_port), config=config)
    reload_url = f"http://127.0.0.1:{admin_port}/admin/reload"

    async def reloads() -> dict[str, Any]:
        outcomes: dict[str, Any] = {}
        async with aiohttp.ClientSession() as client:
            await asyncio.sleep(0.2)
            config.write_text(LOAD_CONFIG % {"fallbacks": 2, "queue": 3})  # picked up by the file watch
            await asyncio.sleep(1.3)
            config.write_text(LOAD_CONFIG % {"fallbacks": 1, "queue": 2})
            async with client.post(reload_url) as response:
                outcomes["valid"] = (response.status, await response.json())
            await asyncio.sleep(1.05)  # reloads are at least a second apart
            config.write_text(
                LOAD_CONFIG.replace("queue-scorer, weight", "no-such-scorer, weight") % {"fallbacks": 1, "queue": 2}
            )
            async with client.post(reload_url) as response:
                outcomes["invalid"] = (response.status, await response.json())
            await asyncio.sleep(1.3)
            async with client.get(f"{router.base_url}/metrics") as response:
                outcomes["metrics"] = await response.text()
        stop.set()
        return outcomes

    stop = asyncio.Event()
    results, outcomes = await asyncio.gather(run_load(router.base_url, 5000, 8, completion, stop=stop), reloads())

    assert [r for r in results if r[0] != 200] == []
    assert len(results) < 5000, "the load ended before the reloads"
    assert outcomes["valid"][0] == 200
    status, body = outcomes["invalid"]
    assert status == 400
    assert body["error"]["details"] == ['schedulingProfiles[0].plugins[0].pluginRef: unknown plugin "no-such-scorer"']
    metrics = outcomes["metrics"]
    successes = _sample(metrics, 'kvroute_config_reloads_total{result="success"}')
    assert successes >= 2, metrics
    assert _sample(metrics, 'kvroute_config_reloads_total{result="failure"}') >= 1
    after = await run_load(router.base_url, 8, 4, completion)
    assert all(status == 200 for status, _ in after)


def _sample(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
