"""The scraper against real `kvroute sim serve` processes on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.datalayer.scraper import MetricsScraper
from kvroute.router.framework import Endpoint
from tests.support import eventually, time_until

pytestmark = pytest.mark.integration


@pytest.fixture
def sims(sim_fleet: Any, require_component: Callable[[str], ModuleType]) -> list[Any]:
    """Two simulators, each on its own 127.0.0.x address; stopped by PID when the test ends."""
    require_component("kvroute.simulator.server.app")
    return [sim_fleet.start(), sim_fleet.start()]


def endpoints_of(sims: list[Any]) -> list[Endpoint]:
    return [Endpoint.create(sim.host, sim.port) for sim in sims]


async def test_metrics_arrive_within_200_ms(
    sims: list[Any], scraper_threads: Callable[[], list[threading.Thread]]
) -> None:
    pool = EndpointPool(endpoints_of(sims))

    async with MetricsScraper(pool):
        took = await time_until(lambda: not any(e.metrics.stale for e in pool.snapshot()), timeout=2.0)
        metrics = [e.metrics for e in pool.snapshot()]

    assert took < 0.2
    for m in metrics:
        assert (m.waiting, m.running, m.kv_usage) == (0, 0, 0.0)
        assert m.block_size is not None and m.block_size > 0
        assert m.num_gpu_blocks is not None and m.num_gpu_blocks > 0
        assert time.monotonic() - m.scraped_at < 1.0
    assert scraper_threads() == []


async def test_a_request_in_flight_shows_as_running_on_its_endpoint_only(
    sims: list[Any], scraper_threads: Callable[[], list[threading.Thread]]
) -> None:
    busy, idle = endpoints_of(sims)
    pool = EndpointPool([busy, idle])

    async with MetricsScraper(pool), aiohttp.ClientSession() as client:
        async with client.get(f"{sims[0].base_url}/v1/models") as response:
            model = (await response.json())["data"][0]["id"]
        body = {"model": model, "prompt": "Tell me a long story.", "max_tokens": 4000, "stream": True}
        async with client.post(f"{sims[0].base_url}/v1/completions", json=body) as response:
            assert response.status == 200
            await response.content.readline()  # the first token is out: the request is in the running batch

            await eventually(lambda: busy.metrics.running >= 1 and not busy.metrics.stale, timeout=1.0)
            assert idle.metrics.running == 0
            response.close()  # client goes away: the simulator aborts the request

        await eventually(lambda: busy.metrics.running == 0, timeout=5.0)
    assert scraper_threads() == []


async def test_a_killed_simulator_turns_stale_within_the_staleness_window(
    sims: list[Any], scraper_threads: Callable[[], list[threading.Thread]]
) -> None:
    doomed, survivor = endpoints_of(sims)
    pool = EndpointPool([doomed, survivor])
    staleness = 2.0

    async with MetricsScraper(pool, staleness=staleness):
        await eventually(lambda: not doomed.metrics.stale and not survivor.metrics.stale, timeout=2.0)
        os.kill(sims[0].pid, signal.SIGKILL)

        took = await time_until(lambda: doomed.metrics.stale, timeout=staleness)
        await asyncio.sleep(0.2)
        survivor_fresh = not survivor.metrics.stale

    assert took < staleness
    assert survivor_fresh
    assert doomed.metrics.block_size is not None  # the last values are kept, only marked stale
    assert scraper_threads() == []


async def test_stop_ends_polling_even_mid_scrape(
    sims: list[Any], scraper_threads: Callable[[], list[threading.Thread]]
) -> None:
    pool = EndpointPool(endpoints_of(sims))
    scraper = MetricsScraper(pool, interval=0.001)
    await scraper.start()
    await asyncio.sleep(0.2)
    assert scraper.polled() == {e.id for e in pool.snapshot()}

    await scraper.stop()

    assert scraper_threads() == []
