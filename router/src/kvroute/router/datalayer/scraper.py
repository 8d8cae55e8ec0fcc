"""Per-endpoint metrics polling: one asyncio task per endpoint in the pool, each with its own connection.

Each task GETs `http://<address>:<port>/metrics` every `interval` seconds (start to start; a slow scrape delays
the next one rather than letting them pile up), with `timeout` per request, over one kept-alive connection
(`http_client.HttpGetter`: tens of microseconds of CPU per scrape where a general-purpose HTTP client spends a
millisecond). A good scrape replaces the endpoint's `metrics` with a new `EndpointMetrics` (`scraped_at` =
`time.monotonic()`, `stale=False`); fields the exposition lacked keep their previous values. A failed scrape
(connection error, timeout, any status but 200, redirects included, a body over `max_body_bytes`, or none of the
engine's load families present) keeps the last values and marks them `stale=True` at once. Metrics never look
fresh for longer than `staleness` after the last good scrape: the next attempt ends (well or badly) within
`interval + timeout`, which must not exceed `staleness`, and each task also checks the age before every attempt,
which catches an event loop that fell behind. Which families are read depends on the endpoint's
`inference.networking.k8s.io/engine-type` label, else `default_engine` (see `metrics_parser`).

The scraper follows the pool: it subscribes on `start()`, starting a task for every added endpoint and cancelling
the task of every removed one, which closes its connection. `stop()` unsubscribes, cancels and awaits every task;
when it returns, every connection is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from kvroute.router.datalayer.http_client import HttpError, HttpGetter
from kvroute.router.datalayer.metrics_parser import ENGINES, EngineSpec, ParsedMetrics, parse_metrics
from kvroute.router.datalayer.pool import EndpointPool, PoolChange
from kvroute.router.framework.endpoint import Endpoint

log = logging.getLogger(__name__)

ENGINE_TYPE_LABEL = "inference.networking.k8s.io/engine-type"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


class ScrapeError(Exception):
    """One scrape could not be used; the message says why."""


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
        self._pool = pool
        self._interval = interval
        self._timeout = timeout
        self._staleness = staleness
        self._default_engine = ENGINES[default_engine]
        self._max_body_bytes = max_body_bytes
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._unknown_engines_logged: set[str] = set()

    async def start(self) -> None:
        """Start polling every endpoint in the pool, and follow the pool's changes from now on."""
        if self._unsubscribe is not None:
            return
        self._unsubscribe = self._pool.subscribe(self._on_pool_change)
        for endpoint in self._pool.snapshot():
            self._start_task(endpoint)

    async def stop(self) -> None:
        """Cancel and await every task, which closes every connection. Safe to call twice."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = [*self._tasks.values(), *self._cancelled]
        self._tasks.clear()
        self._cancelled.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> MetricsScraper:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _on_pool_change(self, change: PoolChange) -> None:
        for endpoint in change.removed:
            task = self._tasks.pop(endpoint.id, None)
            if task is not None:
                task.cancel()
                self._cancelled.add(task)
                task.add_done_callback(self._cancelled.discard)
        for endpoint in change.added:
            self._start_task(endpoint)

    def _start_task(self, endpoint: Endpoint) -> None:
        if endpoint.id not in self._tasks:
            client = HttpGetter(endpoint.address, endpoint.port, "/metrics", max_body_bytes=self._max_body_bytes)
            self._tasks[endpoint.id] = asyncio.get_running_loop().create_task(
                self._poll(endpoint.id, client), name=f"kvroute-scrape-{endpoint.id}"
            )

    async def _poll(self, endpoint_id: str, client: HttpGetter) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while True:
                endpoint = self._pool.get(endpoint_id)
                if endpoint is None:
                    return
                metrics = endpoint.metrics
                if not metrics.stale and time.monotonic() - metrics.scraped_at > self._staleness:
                    self._mark_stale(endpoint_id, f"last good scrape is older than {self._staleness}s")
                await self._scrape_once(endpoint, client)
                next_at = max(next_at + self._interval, loop.time())
                await asyncio.sleep(next_at - loop.time())
        finally:
            await client.aclose()

    async def _scrape_once(self, endpoint: Endpoint, client: HttpGetter) -> None:
        """One scrape of `endpoint`; the result lands on whichever object the pool holds for its id by then."""
        try:
            parsed = await self._fetch(client, self._engine_for(endpoint))
        except (OSError, TimeoutError, HttpError, ScrapeError) as exc:
            self._mark_stale(endpoint.id, exc)
            return
        except Exception as exc:
            # Whatever a model server sends must not end this endpoint's polling for good.
            log.exception("unexpected error scraping endpoint %s", endpoint.id)
            self._mark_stale(endpoint.id, exc)
            return
        current = self._pool.get(endpoint.id)
        if current is None:
            return
        was_stale = current.metrics.stale and current.metrics.scraped_at > 0
        current.metrics = parsed.apply(current.metrics, time.monotonic())
        if was_stale:
            log.info("metrics of endpoint %s are fresh again", endpoint.id)

    async def _fetch(self, client: HttpGetter, engine: EngineSpec) -> ParsedMetrics:
        body = await client.get(self._timeout)
        parsed = parse_metrics(body.decode("utf-8", errors="replace"), engine)
        if not parsed.has_load:
            raise ScrapeError(f"no {engine.name} load metrics in the exposition")
        return parsed

    def _mark_stale(self, endpoint_id: str, reason: BaseException | str) -> None:
        endpoint = self._pool.get(endpoint_id)
        if endpoint is None:
            return
        if not endpoint.metrics.stale:
            log.warning("metrics of endpoint %s are stale: %s", endpoint_id, str(reason) or type(reason).__name__)
            endpoint.metrics = dataclasses.replace(endpoint.metrics, stale=True)
        else:
            log.debug("scrape of endpoint %s failed: %r", endpoint_id, reason)

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
