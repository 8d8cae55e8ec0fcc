"""What metrics collection costs the router at pool sizes of 16 to 1,024 endpoints, idle but for a trickle.

One process (`overhead.exposition`) serves a vLLM 0.34 exposition on N loopback addresses. This process runs the
router's `MetricsScraper` (with the router's defaults: 50 ms interval, 1 s timeout, 2 s staleness, and the default
configuration's 200 ms saturation-detector staleness bounding the slow cadence) over N endpoints, as `kvroute
router` does: a uvloop serving loop, the scraper on its own thread. After every endpoint is fresh and one second
of settling, for `seconds`:

- a trickle of scheduling calls on the serving loop: `rate` per second, each to a random endpoint of a hot set
  (the first `hot`), doing what the Director does (`Ledger.scheduled`): read the age of the endpoint's metrics
  (`time.monotonic() - scraped_at`) and call `scrape_soon`. Ages are kept for endpoints that had a call in the
  second before (the first call to a cold endpoint is not counted);
- the serving loop's lag: how late each trickle tick wakes (p99), what request handling would wait.

Reported per row: scrapes per second per endpoint; CPU µs per scrape (the scraping thread's CPU time,
`CLOCK_THREAD_CPUTIME_ID`, over the scrapes that ended); the scraping thread's and the serving thread's CPU (%
of one core, from `/proc/self/task/<tid>/stat`, 10 ms ticks); metrics age p50/p99 in ms; loop lag p99.
`adaptive` is the shipped cadence (idle endpoints polled at up to 150 ms), `fixed` polls every endpoint every
50 ms (slow factor 1). Each is measured twice: with every endpoint serving the same bytes on every request (an
idle pool: the scraper reuses what it read from an unchanged body), and with every endpoint's load gauges
changing on every request (`changing` = 1.0: each body is read in full, and the adaptive cadence stays at 50 ms).
The exposition server and this process share the machine: look at the load average printed with the results.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from kvroute.bench.overhead.exposition import addresses, raise_file_limit
from kvroute.bench.processes import ManagedProcess
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.datalayer.scraper import MetricsScraper
from kvroute.router.framework import Endpoint

ENDPOINT_COUNTS = (16, 256, 1024)
INTERVAL = 0.05
MAX_AGE = 0.2  # the default configuration's utilization-detector staleness
CADENCES = {"adaptive": 8.0, "fixed": 1.0}
CHANGING = (0.0, 1.0)  # fractions of the endpoints whose load gauges change on every request
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ScrapeRow:
    endpoints: int
    cadence: str
    seconds: float
    scrapes_per_s_per_endpoint: float
    cpu_us_per_scrape: float
    scraper_cpu_percent: float
    serving_cpu_percent: float
    age_p50_ms: float
    age_p99_ms: float
    age_samples: int
    loop_lag_p99_ms: float
    separate_thread: bool
    error: str | None = None
    changing: float = 0.0  # fraction of the endpoints whose bodies change on every request


def _task_ticks(native_id: int) -> int:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the line)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _thread_time(loop: asyncio.AbstractEventLoop) -> float:
    """CPU seconds of the thread running `loop`, read on that thread."""
    future: concurrent.futures.Future[float] = concurrent.futures.Future()
    loop.call_soon_threadsafe(lambda: future.set_result(time.thread_time()))
    return await asyncio.wrap_future(future)


async def measure(
    count: int,
    port: int,
    seconds: float,
    slow_factor: float,
    *,
    changing: float = 0.0,
    rate: float = 100.0,
    hot: int = 32,
    seed: int = 0,
) -> ScrapeRow:
    """One row against the exposition server running on `port` (which serves `changing`: it is only reported)."""
    pool = EndpointPool(Endpoint.create(host, port) for host in addresses(count))
    scraper = MetricsScraper(
        pool, interval=INTERVAL, timeout=1.0, staleness=2.0, max_age=MAX_AGE, slow_factor=slow_factor
    )
    cadence = next(name for name, factor in CADENCES.items() if factor == slow_factor)
    rng = random.Random(seed)
    hot_set = pool.snapshot()[: min(hot, count)]
    async with scraper:
        thread, loop = scraper.thread, scraper.loop
        assert thread is not None and thread.native_id is not None and loop is not None
        deadline = time.monotonic() + 30.0
        while any(e.metrics.stale for e in pool.snapshot()):
            if time.monotonic() > deadline:
                fresh = sum(not e.metrics.stale for e in pool.snapshot())
                return _failed(count, cadence, changing, f"only {fresh} of {count} endpoints fresh after 30 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        serving_id = threading.get_native_id()
        scrapes0, cpu0 = scraper.scrapes, await _thread_time(loop)
        ticks0, serving_ticks0 = _task_ticks(thread.native_id), _task_ticks(serving_id)
        started = time.monotonic()
        ages: list[float] = []
        lags: list[float] = []
        last_call: dict[str, float] = {}
        period = 1.0 / rate
        next_tick = started
        while (now := time.monotonic()) < started + seconds:
            lags.append(max(0.0, now - next_tick))
            endpoint = hot_set[rng.randrange(len(hot_set))]
            if now - last_call.get(endpoint.id, -math.inf) <= 1.0:
                ages.append(now - endpoint.metrics.scraped_at)
            last_call[endpoint.id] = now
            scraper.scrape_soon(endpoint.id)
            next_tick += period
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        elapsed = time.monotonic() - started
        scrapes, cpu = scraper.scrapes - scrapes0, await _thread_time(loop) - cpu0
        ticks, serving_ticks = _task_ticks(thread.native_id) - ticks0, _task_ticks(serving_id) - serving_ticks0
    return ScrapeRow(
        endpoints=count,
        cadence=cadence,
        seconds=elapsed,
        scrapes_per_s_per_endpoint=scrapes / elapsed / count,
        cpu_us_per_scrape=cpu / scrapes * 1e6 if scrapes else math.nan,
        scraper_cpu_percent=100.0 * ticks / _TICKS / elapsed,
        serving_cpu_percent=100.0 * serving_ticks / _TICKS / elapsed,
        age_p50_ms=1e3 * statistics.median(ages) if ages else math.nan,
        age_p99_ms=1e3 * _percentile(ages, 0.99),
        age_samples=len(ages),
        loop_lag_p99_ms=1e3 * _percentile(lags, 0.99),
        separate_thread=thread.ident != threading.get_ident(),
        changing=changing,
    )


def _failed(count: int, cadence: str, changing: float, error: str) -> ScrapeRow:
    nan = math.nan
    return ScrapeRow(count, cadence, 0.0, nan, nan, nan, nan, nan, nan, 0, nan, True, error, changing)


def exposition_server(count: int, port: int, exposition: Path | None, changing: float = 0.0) -> ManagedProcess:
    argv = [sys.executable, "-m", "kvroute.bench.overhead.exposition", "--endpoints", str(count), "--port", str(port)]
    if exposition is not None:
        argv += ["--exposition", str(exposition)]
    if changing:
        argv += ["--changing", str(changing)]
    return ManagedProcess(f"exposition-{count}", argv, f"http://{addresses(1)[0]}:{port}/health")


async def run_scrape(
    counts: Sequence[int],
    port: int,
    seconds: float,
    exposition: Path | None = None,
    changing: Sequence[float] = CHANGING,
) -> list[ScrapeRow]:
    raise_file_limit()
    rows: list[ScrapeRow] = []
    for count in counts:
        for fraction in changing:
            server = exposition_server(count, port, exposition, fraction)
            try:
                server.start()
                async with aiohttp.ClientSession() as session:
                    await server.wait_healthy(session, 60.0)
                for factor in CADENCES.values():
                    rows.append(await measure(count, port, seconds, factor, changing=fraction))
            finally:
                server.stop()
    return rows


def run(
    counts: Sequence[int],
    port: int,
    seconds: float,
    exposition: Path | None = None,
    changing: Sequence[float] = CHANGING,
) -> list[ScrapeRow]:
    """`run_scrape` on a uvloop event loop (the router's), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_scrape(counts, port, seconds, exposition, changing))
    return uvloop.run(run_scrape(counts, port, seconds, exposition, changing))
