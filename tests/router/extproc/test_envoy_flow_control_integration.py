"""Flow control through a real Envoy: kvroute as its ext_proc Endpoint Picker, with `flowControl` and the
`concurrency-detector` over one simulator that runs one request at a time (`maxConcurrency: 1`).

A request that arrives while the pool is saturated is held by Envoy (its request headers are not answered) until
the request in flight completes, and is then served; one that waits `defaultRequestTTL` gets Envoy's 503 with the
router's OpenAI-style body. Everything listens on 127.0.0.0/8 and is stopped by PID.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest

from tests.support import eventually

pytestmark = pytest.mark.integration

MODEL = "kvroute-test"
SIM_ARGS = ("--model", MODEL, "--profile", "tiny", "--max-num-seqs", "1")  # about 6 ms per output token
TTL = 1.0
CONFIG = f"""\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: concurrency-detector
    parameters: {{maxConcurrency: 1}}
  - type: max-score-picker
saturationDetector:
  pluginRef: concurrency-detector
flowControl:
  defaultRequestTTL: {int(TTL * 1000)}ms
"""


class Answer(NamedTuple):
    status: int
    body: str
    waited: float  # seconds from sending to the response headers
    headers_at: float  # time.monotonic() of the response headers
    ended_at: float  # time.monotonic() of the end of the body


@pytest.fixture(scope="module")
def sim(module_sim_fleet: Any) -> Any:
    return module_sim_fleet.start(*SIM_ARGS)


@pytest.fixture
def gateway(
    sim: Any, extproc_router: Callable[..., Any], envoy_gateway: Callable[..., Any], tmp_path: Path
) -> tuple[Any, Any]:
    """(router, Envoy) over the simulator."""
    config = tmp_path / "flow-control.yaml"
    config.write_text(CONFIG)
    router = extproc_router(f"{sim.host}:{sim.port}", "--config", str(config))
    return router, envoy_gateway(router, [(sim.host, sim.port)])


async def complete(session: aiohttp.ClientSession, url: str, max_tokens: int) -> Answer:
    payload = {"model": MODEL, "prompt": "tell me a story " * 8, "max_tokens": max_tokens}
    sent = time.monotonic()
    async with session.post(f"{url}/v1/completions", json=payload) as response:
        headers_at = time.monotonic()
        text = await response.text()
        return Answer(response.status, text, headers_at - sent, headers_at, time.monotonic())


async def metric(router: Any, name: str) -> float:
    return float(await asyncio.to_thread(router.metric, name))


async def test_a_request_is_held_until_capacity_frees_then_served(gateway: tuple[Any, Any]) -> None:
    router, envoy = gateway
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        running = asyncio.create_task(complete(session, envoy.base_url, 100))  # ~0.6 s, well inside the TTL
        await eventually(lambda: metric(router, "kvroute_requests_in_flight{"), timeout=10, interval=0.01)
        held = asyncio.create_task(complete(session, envoy.base_url, 3))
        await eventually(lambda: metric(router, "kvroute_flow_control_queue_size{"), timeout=10, interval=0.01)
        assert not held.done() and not running.done()

        first, second = await asyncio.wait_for(asyncio.gather(running, held), 30)

    assert (first.status, second.status) == (200, 200), (first, second)
    # Answered only once the first had finished (give or take the client's own scheduling).
    assert second.headers_at >= first.ended_at - 0.05, (first, second)
    assert second.waited >= 0.3, second
    assert await metric(router, "kvroute_flow_control_queue_size{") == 0
    assert await metric(router, "kvroute_requests_in_flight{") == 0


async def test_a_request_waiting_past_its_ttl_gets_503_through_envoy(gateway: tuple[Any, Any]) -> None:
    router, envoy = gateway
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        running = asyncio.create_task(complete(session, envoy.base_url, 300))  # ~1.8 s, longer than the TTL
        await eventually(lambda: metric(router, "kvroute_requests_in_flight{"), timeout=10, interval=0.01)
        expired = await asyncio.wait_for(complete(session, envoy.base_url, 3), 30)
        first = await asyncio.wait_for(running, 30)

    assert expired.status == 503, expired
    assert json.loads(expired.body)["error"] == {
        "message": "the request waited too long in the queue",
        "type": "service_unavailable",
        "param": None,
        "code": "ttl_expired",
    }
    assert TTL <= expired.waited < TTL + 1.0, expired
    assert first.status == 200
    assert await metric(router, 'kvroute_flow_control_rejected_total{priority="0",reason="ttl_expired"}') == 1
