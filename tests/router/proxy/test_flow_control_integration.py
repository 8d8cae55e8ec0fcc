"""Flow control through the proxy against real simulators, with the `concurrency-detector`.

Two simulators each run at most 2 sequences at once (`--max-num-seqs 2`) and the detector allows 2 requests in
flight per endpoint, so the pool holds 4 requests and everything beyond waits in the router. Each test first
fills the pool with 4 long "blocker" requests, queues its requests behind them and then lets the pool drain;
waits are measured by the client, from sending a request to its first body byte (its time to first token).

Every load is a fixed number of requests, bounded in time by `asyncio.wait_for` and the client timeout.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from kvroute.router.framework import Endpoint
from kvroute.router.plugins.saturation.concurrency import ConcurrencyDetector
from tests.support import eventually

from .conftest import ProxyServer

pytestmark = pytest.mark.integration

MODEL = "kvroute-test"
SIM_ARGS = ("--model", MODEL, "--profile", "tiny", "--max-num-seqs", "2")  # about 6 ms per output token
MAX_CONCURRENCY = 2
POOL_CAPACITY = 2 * MAX_CONCURRENCY
SHORT_TOKENS = 50  # about 0.3 s of decoding: one "wave" of the queue
BLOCKER_TOKENS = 100
OBJECTIVE = "x-gateway-inference-objective"
FAIRNESS_ID = "x-gateway-inference-fairness-id"
WITHIN = 30.0

CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: concurrency-detector
    parameters: {maxConcurrency: %(max_concurrency)d}
  - type: queue-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: concurrency-detector}
      - {pluginRef: queue-scorer}
      - {pluginRef: max-score-picker}
saturationDetector:
  pluginRef: concurrency-detector
flowControl:
  maxRequests: %(max_requests)d
  defaultRequestTTL: %(ttl)s
  priorityBands:
    - {priority: 10, priorityName: critical}
    - {priority: 0, priorityName: batch}
  objectives:
    critical: 10
    batch: 0
"""


@dataclass(frozen=True)
class Outcome:
    status: int
    wait: float  # seconds from sending to the first body byte
    headers: dict[str, str]
    body: bytes
    tenant: str | None = None


def config(max_requests: int = 100, ttl: str = "20s") -> str:
    return CONFIG % {"max_concurrency": MAX_CONCURRENCY, "max_requests": max_requests, "ttl": ttl}


@pytest.fixture(scope="module")
def endpoints(module_sim_fleet: Any) -> list[Endpoint]:
    return [Endpoint.create(sim.host, sim.port) for sim in (module_sim_fleet.start(*SIM_ARGS) for _ in range(2))]


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # One connection per request: a queued request holds its connection until it is released.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=WITHIN)) as session:
        yield session


async def call(
    client: aiohttp.ClientSession,
    proxy: ProxyServer,
    *,
    objective: str = "batch",
    tenant: str | None = None,
    max_tokens: int = SHORT_TOKENS,
) -> Outcome:
    headers = {OBJECTIVE: objective}
    if tenant is not None:
        headers[FAIRNESS_ID] = tenant
    body = {"model": MODEL, "prompt": "tell me a story " * 8, "max_tokens": max_tokens, "stream": True}
    sent = time.perf_counter()
    async with client.post(f"{proxy.base_url}/v1/completions", json=body, headers=headers) as response:
        first = await response.content.readany()
        wait = time.perf_counter() - sent
        rest = await response.read()
        return Outcome(response.status, wait, dict(response.headers), first + rest, tenant)


def detector(proxy: ProxyServer) -> ConcurrencyDetector:
    plugin = proxy.holder.current.plugins["concurrency-detector"]
    assert isinstance(plugin, ConcurrencyDetector)
    return plugin


def in_flight(proxy: ProxyServer) -> int:
    d = detector(proxy)
    return sum(d.in_flight(e.id) for e in proxy.pool.snapshot())


def sample(proxy: ProxyServer, name: str, **labels: str) -> float:
    """The sum of the series of `name` whose labels include `labels`."""
    total = 0.0
    for metric in proxy.metrics.registry.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def queued(proxy: ProxyServer) -> float:
    return sample(proxy, "kvroute_flow_control_queue_size")


async def fill_pool(client: aiohttp.ClientSession, proxy: ProxyServer, tokens: int = BLOCKER_TOKENS) -> list[Any]:
    """Starts `POOL_CAPACITY` long requests and returns once all of them are in flight."""
    blockers = [
        asyncio.create_task(call(client, proxy, objective="critical", max_tokens=tokens)) for _ in range(POOL_CAPACITY)
    ]
    await eventually(lambda: in_flight(proxy) == POOL_CAPACITY, timeout=10, interval=0.005)
    return blockers


async def bounded(tasks: Sequence[Awaitable[Outcome]]) -> list[Outcome]:
    return list(await asyncio.wait_for(asyncio.gather(*tasks), WITHIN))


def p(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1.0 when all values are equal, 1/n when one value has everything."""
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


async def watch_in_flight(proxy: ProxyServer, stop: asyncio.Event, peaks: dict[str, int]) -> None:
    """Records the most requests the detector counted in flight on each endpoint, until `stop`."""
    d = detector(proxy)
    while not stop.is_set():
        for e in proxy.pool.snapshot():
            peaks[e.id] = max(peaks.get(e.id, 0), d.in_flight(e.id))
        await asyncio.sleep(0.002)


Start = Callable[..., Awaitable[ProxyServer]]


async def test_saturated_pool_queues_and_serves_the_critical_band_first(
    endpoints: list[Endpoint], proxies: Start, client: aiohttp.ClientSession
) -> None:
    proxy = await proxies(endpoints, config())
    stop, peaks = asyncio.Event(), dict[str, int]()
    watcher = asyncio.create_task(watch_in_flight(proxy, stop, peaks))
    blockers = await fill_pool(client, proxy)
    # The batch requests arrive first: first come first served would serve them first.
    batch = [asyncio.create_task(call(client, proxy, objective="batch")) for _ in range(8)]
    await eventually(lambda: queued(proxy) == 8, timeout=5, interval=0.005)
    critical = [asyncio.create_task(call(client, proxy, objective="critical")) for _ in range(8)]
    await eventually(lambda: queued(proxy) == 16, timeout=5, interval=0.005)

    blocked, batch_done, critical_done = await asyncio.gather(bounded(blockers), bounded(batch), bounded(critical))
    stop.set()
    await watcher

    assert [o.status for o in (*blocked, *batch_done, *critical_done)] == [200] * 20  # queued, not refused
    critical_waits = [o.wait for o in critical_done]
    batch_waits = [o.wait for o in batch_done]
    print(f"critical waits p50 {p(critical_waits, 0.5):.3f} p90 {p(critical_waits, 0.9):.3f} s")
    print(f"batch waits p10 {p(batch_waits, 0.1):.3f} p50 {p(batch_waits, 0.5):.3f} p90 {p(batch_waits, 0.9):.3f} s")
    # 8 critical requests are 2 waves of 4; the batch band starts only after them, one wave (~0.3 s) later.
    assert p(critical_waits, 0.9) < p(batch_waits, 0.1), (critical_waits, batch_waits)
    assert p(critical_waits, 0.9) + 0.15 < p(batch_waits, 0.5), (critical_waits, batch_waits)
    # Deterministic dispatch: never more in flight on an endpoint than maxConcurrency, and nothing left over.
    assert peaks and max(peaks.values()) == MAX_CONCURRENCY, peaks
    assert (in_flight(proxy), queued(proxy)) == (0, 0)
    assert sample(proxy, "kvroute_flow_control_queue_duration_seconds_count", priority="10") == 4 + 8
    assert sample(proxy, "kvroute_flow_control_queue_duration_seconds_count", priority="0") == 8


async def test_a_greedy_tenant_does_not_starve_polite_ones_in_its_band(
    endpoints: list[Endpoint], proxies: Start, client: aiohttp.ClientSession
) -> None:
    proxy = await proxies(endpoints, config())
    blockers = await fill_pool(client, proxy)
    # The greedy tenant queues 5x the requests of each polite one, and before them.
    greedy = [asyncio.create_task(call(client, proxy, tenant="greedy")) for _ in range(20)]
    await eventually(lambda: queued(proxy) == 20, timeout=5, interval=0.005)
    polite = [asyncio.create_task(call(client, proxy, tenant=t)) for t in ("polite-a", "polite-b") for _ in range(4)]
    await eventually(lambda: queued(proxy) == 28, timeout=5, interval=0.005)

    blocked, greedy_done, polite_done = await asyncio.gather(bounded(blockers), bounded(greedy), bounded(polite))

    outcomes = [*greedy_done, *polite_done]
    assert [o.status for o in (*blocked, *outcomes)] == [200] * 32
    # While every tenant still had requests waiting (the first 3 x 4 served), each should get an equal share.
    first_served = sorted(outcomes, key=lambda o: o.wait)[:12]
    shares = [sum(o.tenant == t for o in first_served) for t in ("greedy", "polite-a", "polite-b")]
    greedy_waits = sorted(o.wait for o in greedy_done)
    mean_waits = [
        statistics.mean(greedy_waits[:4]),
        *(statistics.mean(o.wait for o in polite_done if o.tenant == t) for t in ("polite-a", "polite-b")),
    ]
    print(f"first 12 served (greedy, polite-a, polite-b): {shares}, Jain {jain(shares):.3f}")
    print(f"mean waits (greedy's first 4, polite-a, polite-b): {[round(w, 3) for w in mean_waits]}")
    print(f"Jain over mean waits {jain(mean_waits):.3f}; greedy's median wait {statistics.median(greedy_waits):.3f}")
    # First come first served would give (12, 0, 0): Jain 1/3.
    assert jain(shares) >= 0.9, shares
    assert jain(mean_waits) >= 0.9, mean_waits
    assert max(o.wait for o in polite_done) < statistics.median(greedy_waits), (polite_done, greedy_waits)


async def test_ttl_expiry_answers_503_and_a_full_queue_429(
    endpoints: list[Endpoint], proxies: Start, client: aiohttp.ClientSession
) -> None:
    ttl = 0.5
    proxy = await proxies(endpoints, config(max_requests=2, ttl=f"{int(ttl * 1000)}ms"))
    blockers = await fill_pool(client, proxy, tokens=250)  # ~1.5 s: saturated for longer than the TTL
    waiting = [asyncio.create_task(call(client, proxy)) for _ in range(2)]
    await eventually(lambda: queued(proxy) == 2, timeout=5, interval=0.005)

    refused = await asyncio.wait_for(call(client, proxy), WITHIN)
    expired = await bounded(waiting)
    blocked = await bounded(blockers)

    assert (refused.status, refused.headers.get("Retry-After")) == (429, "1")
    assert refused.wait < ttl
    assert _error(refused) == {
        "message": "the request queue is full (maxRequests)",
        "type": "rate_limit_error",
        "param": None,
        "code": "capacity",
    }
    for outcome in expired:
        assert outcome.status == 503
        assert ttl <= outcome.wait < ttl + 1.0, outcome.wait
        assert _error(outcome) == {
            "message": "the request waited too long in the queue",
            "type": "service_unavailable",
            "param": None,
            "code": "ttl_expired",
        }
    print(f"429 after {refused.wait:.3f} s; 503 after {[round(o.wait, 3) for o in expired]} s (TTL {ttl} s)")
    assert [o.status for o in blocked] == [200] * POOL_CAPACITY
    assert sample(proxy, "kvroute_flow_control_rejected_total", reason="capacity") == 1
    assert sample(proxy, "kvroute_flow_control_rejected_total", reason="ttl_expired") == 2
    assert queued(proxy) == 0


async def test_a_client_leaving_the_queue_leaves_nothing_queued(
    endpoints: list[Endpoint], proxies: Start, client: aiohttp.ClientSession
) -> None:
    proxy = await proxies(endpoints, config())
    blockers = await fill_pool(client, proxy)
    leaving = asyncio.create_task(call(client, proxy, tenant="impatient"))
    await eventually(lambda: queued(proxy) == 1, timeout=5, interval=0.005)

    leaving.cancel()  # closes its connection
    await eventually(lambda: queued(proxy) == 0, timeout=5, interval=0.01)
    blocked = await bounded(blockers)
    after = await asyncio.wait_for(call(client, proxy), WITHIN)

    assert sample(proxy, "kvroute_flow_control_queue_size", flow="impatient") == 0
    assert sample(proxy, "kvroute_flow_control_rejected_total", reason="disconnected") == 1
    assert sample(proxy, "kvroute_requests_total", code="499") == 1
    assert [o.status for o in (*blocked, after)] == [200] * (POOL_CAPACITY + 1)
    assert in_flight(proxy) == 0


def _error(outcome: Outcome) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(outcome.body)["error"]
    return error


HOLDBACK = """\
  - type: priority-holdback-policy
    name: holdback
    parameters: {strategy: stepwise-spread, minCeiling: 0.5}
"""


async def test_a_priority_holdback_keeps_room_for_critical_requests(
    endpoints: list[Endpoint], proxies: Start, client: aiohttp.ClientSession
) -> None:
    text = config().replace("plugins:\n", "plugins:\n" + HOLDBACK, 1)
    text += "  usageLimitPolicyPluginRef: holdback\n"
    proxy = await proxies(endpoints, text)
    # The batch band may fill the pool only to half its capacity (minCeiling 0.5): 2 of 4; the rest waits.
    batch = [asyncio.create_task(call(client, proxy, objective="batch", max_tokens=BLOCKER_TOKENS)) for _ in range(4)]
    await eventually(lambda: (in_flight(proxy), queued(proxy)) == (POOL_CAPACITY // 2, 2), timeout=10, interval=0.005)
    # A critical request finds the held-back room at once: nothing running has to end first.
    critical = await asyncio.wait_for(call(client, proxy, objective="critical"), WITHIN)
    assert critical.status == 200
    assert queued(proxy) == 2, "the batch band stayed held back while the critical request ran"
    blocked = await bounded(batch)
    assert [o.status for o in blocked] == [200] * 4
    print(f"critical wait {critical.wait:.3f} s; batch waits {[round(o.wait, 3) for o in blocked]}")
    # The critical request went before the two held batch requests, which waited for the first two to end.
    assert critical.wait < min(sorted(o.wait for o in blocked)[2:]), (critical, blocked)
    assert (in_flight(proxy), queued(proxy)) == (0, 0)
