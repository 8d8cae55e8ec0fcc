"""Metrics collection off the serving loop: a thread of its own polls every endpoint's `/metrics`.

`MetricsScraper.start()` starts the thread `kvroute-scraper`, which runs its own event loop (uvloop when
installed) and, on it, a `poller.Poller`: one schedule of scrapes and one kept-alive connection per endpoint, the
answer parsed in the protocol callback (`metrics_parser` reads only the families routing needs, and not at all
when the body is the same as the endpoint's previous one) and handed over by swapping the endpoint's `metrics` for
a new `EndpointMetrics`. The serving loop never runs any of it; it pays for one `call_soon_threadsafe` per pool
change and per batch of routing hints (`scrape_soon`, coalesced). Python threads share one interpreter lock: the
scraper's parsing competes with the serving loop for it, its syscalls do not.

Cadence (`cadence.Cadence`): each endpoint is scraped every `interval` (start to start; a slow scrape delays the
next one rather than letting them pile up) while its load changes or requests are routed to it (`hold` seconds
after the last), backing off to at most `slowest` while nothing changes:

    slowest = min(interval * slow_factor, staleness - timeout, max_age - interval)

where `max_age` is the oldest metrics the router's plugins trust (the saturation detector's staleness, when it
has one): an idle endpoint's metrics stay younger than that. `scrape_soon(endpoint_id)` (the Director calls it when
it schedules a request to an endpoint) scrapes an endpoint polled slowly at once and puts it back on the fast
cadence; hints for an endpoint within `interval / 4` of the last one passed on are dropped (under load, one in
many requests wakes the scraper, not every one).

Failure semantics (`poller`): a failed scrape keeps the last values and marks them `stale=True` at once. Metrics
never look fresh for longer than `staleness` after the last good scrape: the next attempt ends (well or badly)
within `slowest + timeout <= staleness`, and each attempt first checks the age, which catches a loop that fell
behind. Which families are read depends on the endpoint's `inference.networking.k8s.io/engine-type` label, else
`default_engine` (see `metrics_parser`).

The scraper follows the pool: it subscribes on `start()`; added endpoints are polled and removed ones dropped (their
connections closed). `stop()` unsubscribes, closes every connection, stops the loop and joins the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

from kvroute.router.datalayer.cadence import Cadence
from kvroute.router.datalayer.metrics_parser import ENGINES, EngineSpec
from kvroute.router.datalayer.poller import Poller, PollSettings, ScrapeError
from kvroute.router.datalayer.pool import EndpointPool, PoolChange
from kvroute.router.framework.endpoint import Endpoint

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ENGINE_TYPE_LABEL", "MetricsScraper", "ScrapeError"]

ENGINE_TYPE_LABEL = "inference.networking.k8s.io/engine-type"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_SLOW_FACTOR = 8
DEFAULT_HOLD = 1.0

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def default_loop_factory() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class MetricsScraper:
    def __init__(
        self,
        pool: EndpointPool,
        *,
        interval: float = 0.05,
        timeout: float = 1.0,
        staleness: float = 2.0,
        default_engine: str = "vllm",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        slow_factor: float = DEFAULT_SLOW_FACTOR,
        hold: float = DEFAULT_HOLD,
        max_age: float | None = None,
        loop_factory: LoopFactory = default_loop_factory,
    ) -> None:
        if default_engine not in ENGINES:
            raise ValueError(f"unknown engine type {default_engine!r}; known: {', '.join(sorted(ENGINES))}")
        if interval <= 0 or timeout <= 0 or staleness <= 0:
            raise ValueError("interval, timeout and staleness must be positive")
        if interval + timeout > staleness:
            raise ValueError(
                f"interval ({interval}s) + timeout ({timeout}s) exceeds staleness ({staleness}s): "
                "metrics could look fresh past the staleness window"
            )
        if slow_factor < 1 or hold < 0:
            raise ValueError("slow_factor must be at least 1 and hold at least 0")
        self._pool = pool
        self.interval = interval
        bounds = [interval * slow_factor, staleness - timeout]
        if max_age is not None:
            bounds.append(max_age - interval)
        self.slowest = max(interval, min(bounds))
        self._hold = hold
        self._default_engine = ENGINES[default_engine]
        self._settings = PollSettings(
            timeout=timeout,
            staleness=staleness,
            max_body_bytes=max_body_bytes,
            cadence=lambda: Cadence(interval, self.slowest, hold),
            engine_for=self._engine_for,
        )
        self._loop_factory = loop_factory
        self._unknown_engines_logged: set[str] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: Poller | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._hints: deque[str] = deque()
        self._hint_pending = False
        self._hinted: dict[str, float] = {}  # endpoint id -> when its last hint was passed on
        self._hint_gap = interval / 4

    @property
    def thread(self) -> threading.Thread | None:
        """The scraping thread while started."""
        return self._thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The scraping thread's event loop while started."""
        return self._loop

    @property
    def scrapes(self) -> int:
        """Scrapes ended (well or badly) since `start`."""
        return self._poller.scrapes if self._poller is not None else 0

    def polled(self) -> frozenset[str]:
        """Ids of the endpoints being polled (empty when stopped)."""
        return self._poller.polled if self._poller is not None else frozenset()

    async def start(self) -> None:
        """Start the thread, poll every endpoint in the pool, and follow the pool's changes from now on."""
        if self._thread is not None:
            return
        ready: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, Poller]] = concurrent.futures.Future()
        thread = threading.Thread(target=self._run, args=(ready,), name="kvroute-scraper", daemon=True)
        thread.start()
        self._thread = thread
        loop, poller = await asyncio.wrap_future(ready)
        self._loop, self._poller = loop, poller
        self._unsubscribe = self._pool.subscribe(self._on_pool_change)
        self._on_pool_change(PoolChange(added=self._pool.snapshot()))

    async def stop(self) -> None:
        """Close every connection, stop the loop and join the thread. Safe to call twice."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        thread, loop, poller = self._thread, self._loop, self._poller
        if thread is None or loop is None or poller is None:
            return
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(poller.close(), loop))
        stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop.call_soon_threadsafe(_stop_loop, loop, stopped)
        await asyncio.wrap_future(stopped)
        thread.join()  # the loop has stopped: returns at once
        self._thread = self._loop = self._poller = None

    async def __aenter__(self) -> MetricsScraper:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def scrape_soon(self, endpoint_id: str) -> None:
        """A request was just scheduled to `endpoint_id`: keep it on the fast cadence, and scrape it at once if its
        metrics are older than `interval`. Cheap, from any thread; a no-op while stopped."""
        loop = self._loop
        if loop is None:
            return
        now = time.monotonic()
        if now - self._hinted.get(endpoint_id, -math.inf) < self._hint_gap:
            return  # the last hint, a moment ago, already put it on the fast cadence
        self._hinted[endpoint_id] = now
        if len(self._hinted) > 4 * len(self._pool) + 64:
            self._hinted.clear()  # endpoints that left the pool
        self._hints.append(endpoint_id)
        if not self._hint_pending:
            self._hint_pending = True
            loop.call_soon_threadsafe(self._drain_hints)

    def _drain_hints(self) -> None:
        self._hint_pending = False  # before draining: a hint added from now on schedules another drain
        poller, hints = self._poller, self._hints
        while hints:
            endpoint_id = hints.popleft()
            if poller is not None:
                poller.routed(endpoint_id)

    def _on_pool_change(self, change: PoolChange) -> None:
        loop, poller = self._loop, self._poller
        if loop is not None and poller is not None and (change.added or change.removed):
            loop.call_soon_threadsafe(poller.apply, change)

    def _run(self, ready: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, Poller]]) -> None:
        loop = self._loop_factory()
        try:
            asyncio.set_event_loop(loop)
            ready.set_result((loop, Poller(self._pool, self._settings)))
            loop.run_forever()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            loop.close()

    def _engine_for(self, endpoint: Endpoint) -> EngineSpec:
        name = endpoint.labels.get(ENGINE_TYPE_LABEL)
        if name is None:
            return self._default_engine
        engine = ENGINES.get(name)
        if engine is None:
            if name not in self._unknown_engines_logged:
                self._unknown_engines_logged.add(name)
                log.warning(
                    "unknown engine type %r on endpoint %s; reading %s metrics",
                    name,
                    endpoint.id,
                    self._default_engine.name,
                )
            return self._default_engine
        return engine


def _stop_loop(loop: asyncio.AbstractEventLoop, stopped: concurrent.futures.Future[None]) -> None:
    loop.stop()
    stopped.set_result(None)
