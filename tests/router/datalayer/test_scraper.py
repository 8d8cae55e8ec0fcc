"""The scraper against small in-process HTTP servers on loopback, each standing in for one model server."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from kvroute.router.datalayer.cadence import Cadence
from kvroute.router.datalayer.metrics_parser import ENGINES
from kvroute.router.datalayer.poller import Poller, PollSettings
from kvroute.router.datalayer.pool import EndpointPool, PoolChange
from kvroute.router.datalayer.scraper import ENGINE_TYPE_LABEL, MetricsScraper
from kvroute.router.framework import Endpoint
from tests.support import eventually, time_until

VLLM_BODY = (
    "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{model_name="m"} 3.0\n'
    'vllm:num_requests_running{model_name="m"} 5.0\n'
    'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
    'vllm:cache_config_info{block_size="16",num_gpu_blocks="1000"} 1.0\n'
)
SGLANG_BODY = "sglang:num_queue_reqs 1\nsglang:num_running_reqs 2\nsglang:token_usage 0.5\n"


class FakeModelServer:
    """Answers `/metrics` with whatever the test sets; counts the requests it saw."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.body = VLLM_BODY
        self.status = 200
        self.delay = 0.0
        self.headers: dict[str, str] = {}
        self.requests = 0
        self.peers: set[int] = set()  # client ports: one per connection
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.requests += 1
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername")[1])
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text=self.body, headers=self.headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def open_connections(self) -> int:
        assert self._runner is not None and self._runner.server is not None
        return len(self._runner.server.connections)

    def endpoint(self, **labels: str) -> Endpoint:
        return Endpoint.create(self.host, self.port, labels=labels)


@pytest.fixture
async def servers() -> AsyncIterator[list[FakeModelServer]]:
    started = [FakeModelServer(f"127.0.0.{i}") for i in (61, 62, 63)]
    for server in started:
        await server.start()
    yield started
    for server in started:
        await server.stop()


async def test_metrics_arrive_fresh_with_a_monotonic_timestamp(servers: list[FakeModelServer]) -> None:
    endpoint = servers[0].endpoint()
    pool = EndpointPool([endpoint])

    async with MetricsScraper(pool, interval=0.02):
        took = await time_until(lambda: not endpoint.metrics.stale)
        metrics = endpoint.metrics

    assert took < 0.2
    assert (metrics.waiting, metrics.running, metrics.kv_usage) == (3, 5, 0.25)
    assert (metrics.block_size, metrics.num_gpu_blocks) == (16, 1000)
    assert 0 <= time.monotonic() - metrics.scraped_at < 1.0


async def test_polls_at_the_configured_interval(servers: list[FakeModelServer]) -> None:
    pool = EndpointPool([servers[0].endpoint()])

    async with MetricsScraper(pool, interval=0.05, slow_factor=1):  # no backing off while nothing changes
        await asyncio.sleep(0.5)

    assert 6 <= servers[0].requests <= 12


@pytest.mark.parametrize(
    "breakage",
    ["status", "redirect", "garbage", "too-big", "timeout", "down"],
)
async def test_a_failed_scrape_marks_stale_and_keeps_the_last_values(
    servers: list[FakeModelServer], breakage: str
) -> None:
    server = servers[0]
    endpoint = server.endpoint()
    pool = EndpointPool([endpoint])

    async with MetricsScraper(pool, interval=0.02, timeout=0.2, max_body_bytes=4096):
        await eventually(lambda: not endpoint.metrics.stale)
        if breakage == "status":
            server.status = 500
        elif breakage == "redirect":  # to a healthy server: following it would hide the breakage
            server.status, server.headers = 302, {"Location": f"http://{servers[1].host}:{servers[1].port}/metrics"}
        elif breakage == "garbage":
            server.body = "<html>not metrics</html>"
        elif breakage == "too-big":
            server.body = VLLM_BODY + "#" * 5000
        elif breakage == "timeout":
            server.delay = 0.5
        else:
            await server.stop()
        await eventually(lambda: endpoint.metrics.stale)
        stale = endpoint.metrics

        assert (stale.waiting, stale.running, stale.kv_usage) == (3, 5, 0.25)
        if breakage != "down":
            server.status, server.headers, server.delay = 200, {}, 0.0
            server.body = VLLM_BODY.replace("3.0", "4.0")
            await eventually(lambda: not endpoint.metrics.stale)
            assert endpoint.metrics.waiting == 4


async def test_engine_type_label_selects_the_families(servers: list[FakeModelServer]) -> None:
    servers[0].body = SGLANG_BODY
    sglang = servers[0].endpoint(**{ENGINE_TYPE_LABEL: "sglang"})
    plain = servers[1].endpoint()
    pool = EndpointPool([sglang, plain])

    async with MetricsScraper(pool, interval=0.02):
        await eventually(lambda: not sglang.metrics.stale and not plain.metrics.stale)

    assert (sglang.metrics.waiting, sglang.metrics.running, sglang.metrics.kv_usage) == (1, 2, 0.5)
    assert plain.metrics.waiting == 3


async def test_default_engine_applies_to_unlabelled_and_unknown_engines(
    servers: list[FakeModelServer], caplog: pytest.LogCaptureFixture
) -> None:
    servers[0].body = servers[1].body = SGLANG_BODY
    unlabelled = servers[0].endpoint()
    unknown = servers[1].endpoint(**{ENGINE_TYPE_LABEL: "mystery-engine"})
    pool = EndpointPool([unlabelled, unknown])

    with caplog.at_level(logging.WARNING):
        async with MetricsScraper(pool, interval=0.02, default_engine="sglang"):
            await eventually(lambda: not unlabelled.metrics.stale and not unknown.metrics.stale)

    assert unlabelled.metrics.running == unknown.metrics.running == 2
    assert caplog.text.count("unknown engine type 'mystery-engine'") == 1


async def test_polling_follows_the_pool_and_stop_leaves_nothing(
    servers: list[FakeModelServer],
    scraper_threads: Callable[[], list[threading.Thread]],
) -> None:
    first, second, third = (server.endpoint() for server in servers)
    pool = EndpointPool([first])
    scraper = MetricsScraper(pool, interval=0.02, slow_factor=1)
    await scraper.start()

    await eventually(lambda: scraper.polled() == {first.id})
    pool.set_endpoints([first, second, third])
    await eventually(lambda: not third.metrics.stale)
    assert scraper.polled() == {first.id, second.id, third.id}

    pool.set_endpoints([third])
    await asyncio.sleep(0.05)
    requests_after_removal = servers[0].requests
    await asyncio.sleep(0.1)
    assert servers[0].requests == requests_after_removal
    assert scraper.polled() == {third.id}

    await scraper.stop()
    await scraper.stop()

    assert scraper.polled() == frozenset()
    assert scraper_threads() == []
    await eventually(lambda: all(server.open_connections == 0 for server in servers))  # connections closed
    pool.set_endpoints([first])  # no longer followed
    assert scraper.polled() == frozenset()


async def test_polled_endpoints_stay_bounded_under_pool_churn(
    scraper_threads: Callable[[], list[threading.Thread]],
) -> None:
    # Nothing listens on these ports: every scrape fails fast, which is fine for counting what is polled.
    pool = EndpointPool()

    async with MetricsScraper(pool, interval=0.01) as scraper:
        for round_ in range(300):
            pool.set_endpoints([Endpoint.create("127.0.0.64", 1000 + (round_ + i) % 50) for i in range(5)])
            await asyncio.sleep(0)
        await eventually(lambda: scraper.polled() == {e.id for e in pool.snapshot()})
    assert scraper_threads() == []


async def test_each_endpoint_is_scraped_over_one_kept_alive_connection(servers: list[FakeModelServer]) -> None:
    pool = EndpointPool([servers[0].endpoint(), servers[1].endpoint()])

    async with MetricsScraper(pool, interval=0.01, slow_factor=1):
        await asyncio.sleep(0.3)
        assert servers[0].open_connections == servers[1].open_connections == 1

    assert servers[0].requests >= 10
    assert len(servers[0].peers) == len(servers[1].peers) == 1
    await eventually(lambda: servers[0].open_connections == servers[1].open_connections == 0)


async def test_relabelled_endpoint_receives_the_metrics(
    servers: list[FakeModelServer],
    scraper_threads: Callable[[], list[threading.Thread]],
) -> None:
    old = servers[0].endpoint()
    pool = EndpointPool([old])

    async with MetricsScraper(pool, interval=0.02):
        await eventually(lambda: not old.metrics.stale)
        servers[0].body = VLLM_BODY.replace("3.0", "8.0")
        pool.set_endpoints([servers[0].endpoint(**{"llm-d.ai/role": "decode"})])
        new = pool.snapshot()[0]

        await eventually(lambda: new.metrics.waiting == 8)

    assert new is not old
    assert scraper_threads() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"default_engine": "tgi"}, "unknown engine type 'tgi'"),
        ({"interval": 0}, "must be positive"),
        ({"timeout": -1}, "must be positive"),
        ({"interval": 1.0, "timeout": 1.5, "staleness": 2.0}, "exceeds staleness"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MetricsScraper(EndpointPool(), **kwargs)  # type: ignore[arg-type]


async def test_an_idle_endpoint_is_polled_slowly_and_a_changing_one_at_the_interval(
    servers: list[FakeModelServer],
) -> None:
    changing, idle = servers[0], servers[1]
    pool = EndpointPool([changing.endpoint(), idle.endpoint()])

    async def keep_changing() -> None:
        for waiting in itertools.count():
            changing.body = VLLM_BODY.replace("3.0", f"{waiting}.0")
            await asyncio.sleep(0.005)

    changer = asyncio.create_task(keep_changing())
    try:
        async with MetricsScraper(pool, interval=0.02, slow_factor=8) as scraper:  # slowest 160 ms
            await asyncio.sleep(0.5)  # the idle one backs off: 20, 40, 80, 160 ms
            changing_before, idle_before = changing.requests, idle.requests
            await asyncio.sleep(1.0)
            changing_rate, idle_rate = changing.requests - changing_before, idle.requests - idle_before
    finally:
        changer.cancel()

    assert scraper.slowest == pytest.approx(0.16)
    assert 30 <= changing_rate <= 55  # every 20 ms (a loaded machine fires timers late)
    assert 5 <= idle_rate <= 8  # every 160 ms


async def test_a_routed_request_scrapes_a_slowly_polled_endpoint_at_once(servers: list[FakeModelServer]) -> None:
    endpoint = servers[0].endpoint()
    pool = EndpointPool([endpoint])

    async with MetricsScraper(pool, interval=0.05, timeout=0.5, slow_factor=8) as scraper:  # slowest 400 ms
        await asyncio.sleep(1.0)  # backed off to 400 ms
        await eventually(lambda: time.monotonic() - endpoint.metrics.scraped_at < 0.05)  # just scraped
        routed_at = time.monotonic()
        scraper.scrape_soon(endpoint.id)
        took = await time_until(lambda: endpoint.metrics.scraped_at > routed_at, timeout=1.0)
        requests = servers[0].requests
        await asyncio.sleep(0.3)  # and it stays on the 50 ms cadence while requests go there
        fast = servers[0].requests - requests

    assert took < 0.1  # not the 400 ms of the slow cadence
    assert fast >= 4


async def test_metrics_older_than_the_staleness_window_are_marked_stale_before_the_next_attempt(
    servers: list[FakeModelServer],
) -> None:
    server = servers[0]
    endpoint = server.endpoint()
    pool = EndpointPool([endpoint])
    now = [100.0]
    settings = PollSettings(
        timeout=0.2,
        staleness=1.0,
        max_body_bytes=1 << 20,
        cadence=lambda: Cadence(0.05, 0.05, 1.0),
        engine_for=lambda _: ENGINES["vllm"],
    )
    poller = Poller(pool, settings, clock=lambda: now[0])
    poller.apply(PoolChange(added=(endpoint,)))
    try:
        await eventually(lambda: not endpoint.metrics.stale)
        server.delay = 0.1  # keeps the next scrape in flight long enough to look at the metrics meanwhile
        now[0] += 1.2  # as if the scraper's loop had stalled: the next attempt (within 50 ms) is overdue

        took = await time_until(lambda: endpoint.metrics.stale, timeout=0.5)
        await eventually(lambda: not endpoint.metrics.stale)
    finally:
        await poller.close()

    assert took < 0.2  # at the attempt, before its answer (100 ms later)
    assert endpoint.metrics.scraped_at == 101.2
    assert endpoint.metrics.waiting == 3


async def test_scraping_runs_off_the_serving_loop(servers: list[FakeModelServer]) -> None:
    endpoint = servers[0].endpoint()
    pool = EndpointPool([endpoint])
    threads: list[int] = []
    original = Endpoint.__dict__["metrics"]

    async with MetricsScraper(pool, interval=0.02) as scraper:
        assert scraper.loop is not None and scraper.thread is not None
        assert scraper.loop is not asyncio.get_running_loop()
        scraper.loop.call_soon_threadsafe(lambda: threads.append(threading.get_ident()))
        await eventually(lambda: not endpoint.metrics.stale and threads)
        scraper_thread = scraper.thread.ident

    assert original is Endpoint.__dict__["metrics"]
    assert threads == [scraper_thread] != [threading.get_ident()]


async def test_an_unchanged_body_keeps_the_metrics_fresh_and_a_changed_gauge_is_read(
    servers: list[FakeModelServer],
) -> None:
    endpoint = servers[0].endpoint()
    pool = EndpointPool([endpoint])

    async with MetricsScraper(pool, interval=0.02, slow_factor=1):
        await eventually(lambda: not endpoint.metrics.stale)
        first = endpoint.metrics
        await eventually(lambda: servers[0].requests >= 5)
        later = endpoint.metrics
        servers[0].body = VLLM_BODY.replace("0.25", "0.75")
        await eventually(lambda: endpoint.metrics.kv_usage == 0.75)
        changed = endpoint.metrics

    assert later.scraped_at > first.scraped_at and not later.stale  # the same body, scraped again
    assert (later.waiting, later.running, later.kv_usage, later.num_gpu_blocks) == (3, 5, 0.25, 1000)
    assert (changed.waiting, changed.running, changed.num_gpu_blocks) == (3, 5, 1000)


async def test_a_slow_endpoint_times_out_without_holding_up_the_others(servers: list[FakeModelServer]) -> None:
    slow, fast = servers[0], servers[1]
    pool = EndpointPool([slow.endpoint(), fast.endpoint()])
    slow_endpoint, fast_endpoint = pool.snapshot()

    async with MetricsScraper(pool, interval=0.02, timeout=0.1, slow_factor=1):
        await eventually(lambda: not slow_endpoint.metrics.stale and not fast_endpoint.metrics.stale)
        slow.delay = 0.3
        took = await time_until(lambda: slow_endpoint.metrics.stale, timeout=1.0)
        fast_before = fast.requests
        await asyncio.sleep(0.3)
        fast_during = fast.requests - fast_before
        fresh_fast = time.monotonic() - fast_endpoint.metrics.scraped_at
        slow.delay = 0.0
        await eventually(lambda: not slow_endpoint.metrics.stale)

    assert took < 0.3  # the next attempt, 20 ms later, times out after 100 ms
    assert fast_during >= 5  # every 20 ms, minus a loaded machine's late timers
    assert fresh_fast < 0.1
    assert len(slow.peers) >= 2  # a timed-out scrape's connection is not used again


async def test_hints_for_one_endpoint_a_moment_apart_wake_the_scraper_once(
    servers: list[FakeModelServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = servers[0].endpoint()
    routed: list[str] = []
    monkeypatch.setattr(Poller, "routed", lambda self, endpoint_id: routed.append(endpoint_id))
    async with MetricsScraper(EndpointPool([endpoint]), interval=0.4, timeout=0.2, staleness=2.0) as scraper:
        for _ in range(50):  # a burst of requests to one endpoint, well within interval / 4
            scraper.scrape_soon(endpoint.id)
        await asyncio.sleep(0.15)  # past the gap: the next hint goes through
        scraper.scrape_soon(endpoint.id)
        await eventually(lambda: len(routed) == 2, 2.0)

    assert routed == [endpoint.id, endpoint.id]
