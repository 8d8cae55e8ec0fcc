"""The scraper's polling, on the scraper's own event loop: one timer and one kept-alive connection per endpoint.

No task per endpoint and no await per scrape: a timer fires `_scrape`, which sends the prebuilt GET
(`http_client.HttpGetter.start_get`); the protocol callback that completes the answer calls `_scraped`, which parses
it, swaps the endpoint's `metrics` for a new `EndpointMetrics` (one reference assignment: the serving loop's scorers
read `endpoint.metrics` and see either the old object or the new one) and arms the timer for the next scrape
(`cadence.Cadence`). Endpoints come and go with `apply` (the pool's changes, handed over by the scraper);
`routed` is the Director's hint that a request was just scheduled to an endpoint.

A good scrape replaces the endpoint's metrics (`scraped_at` = `time.monotonic()` when it ended, `stale=False`);
fields the exposition lacked keep their previous values. A failed scrape (connection error, timeout, any status
but 200, a body over `max_body_bytes`, or none of the engine's load families present) keeps the last values and
marks them `stale=True` at once. Before every attempt the age of the last good scrape is checked against
`staleness`, which catches a loop that fell behind. The result lands on whichever object the pool holds for the
endpoint's id by then (`EndpointPool.get`), so a relabelled endpoint receives it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from functools import partial

from kvroute.router.datalayer.cadence import Cadence
from kvroute.router.datalayer.http_client import HttpError, HttpGetter, Outcome
from kvroute.router.datalayer.metrics_parser import EngineSpec, ParsedMetrics, parse_metrics
from kvroute.router.datalayer.pool import EndpointPool, PoolChange
from kvroute.router.framework.endpoint import Endpoint

log = logging.getLogger(__name__)


class ScrapeError(Exception):
    """One scrape could not be used; the message says why."""


_EXPECTED = (OSError, TimeoutError, HttpError, ScrapeError)


@dataclasses.dataclass(frozen=True, slots=True)
class PollSettings:
    timeout: float
    staleness: float
    max_body_bytes: int
    cadence: Callable[[], Cadence]  # a new endpoint's
    engine_for: Callable[[Endpoint], EngineSpec]


class _Target:
    """One polled endpoint."""

    __slots__ = ("cadence", "client", "due", "endpoint_id", "on_outcome", "started", "timer")

    def __init__(self, endpoint_id: str, client: HttpGetter, cadence: Cadence) -> None:
        self.endpoint_id = endpoint_id
        self.client = client
        self.cadence = cadence
        self.timer: asyncio.TimerHandle | None = None  # armed while waiting for the next scrape
        self.due = 0.0  # when the armed timer fires
        self.started = float("-inf")  # when the last scrape started
        self.on_outcome: Callable[[Outcome], None] = lambda _: None


class Poller:
    """Runs on one event loop, which must be running when any method is called (`close` is awaited there)."""

    def __init__(self, pool: EndpointPool, settings: PollSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._settings = settings
        self._clock = clock
        self._targets: dict[str, _Target] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the one it runs on, known from the first `apply`
        self._closing: set[asyncio.Task[None]] = set()
        self.polled: frozenset[str] = frozenset()  # ids of the endpoints polled; swapped whole, readable anywhere
        self.scrapes = 0  # ended (well or badly) so far

    def apply(self, change: PoolChange) -> None:
        """Stop polling the removed endpoints (closing their connections) and start polling the added ones."""
        for endpoint in change.removed:
            target = self._targets.pop(endpoint.id, None)
            if target is not None:
                self._drop(target)
        loop = self._loop = self._loop or asyncio.get_running_loop()
        for endpoint in change.added:
            if endpoint.id not in self._targets:
                target = self._targets[endpoint.id] = self._target(endpoint)
                self._arm(target, self._clock(), loop)
        self.polled = frozenset(self._targets)

    def routed(self, endpoint_id: str) -> None:
        target = self._targets.get(endpoint_id)
        if target is None or self._loop is None:
            return
        now = self._clock()
        if target.timer is None:  # in flight: its answer arms the timer, on the fast cadence
            target.cadence.routed(now, target.started, now)
            return
        due = target.cadence.routed(now, target.started, target.due)
        if due < target.due:
            target.timer.cancel()
            target.due = due
            if due <= now:
                target.timer = None
                self._scrape(target)
            else:
                target.timer = self._loop.call_later(due - now, self._scrape, target)

    async def close(self) -> None:
        """Stop polling every endpoint; returns once every connection is closed."""
        targets, self._targets = list(self._targets.values()), {}
        self.polled = frozenset()
        for target in targets:
            self._drop(target)
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _target(self, endpoint: Endpoint) -> _Target:
        settings = self._settings
        client = HttpGetter(endpoint.address, endpoint.port, "/metrics", max_body_bytes=settings.max_body_bytes)
        target = _Target(endpoint.id, client, settings.cadence())
        target.on_outcome = partial(self._scraped, target)
        return target

    def _drop(self, target: _Target) -> None:
        if target.timer is not None:
            target.timer.cancel()
            target.timer = None
        assert self._loop is not None
        task = self._loop.create_task(target.client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _arm(self, target: _Target, due: float, loop: asyncio.AbstractEventLoop) -> None:
        target.due = due
        target.timer = loop.call_later(max(0.0, due - self._clock()), self._scrape, target)

    def _scrape(self, target: _Target) -> None:
        target.timer = None
        endpoint = self._pool.get(target.endpoint_id)
        if endpoint is None or self._targets.get(target.endpoint_id) is not target:
            return  # left the pool; `apply` drops it
        now = self._clock()
        metrics = endpoint.metrics
        if not metrics.stale and now - metrics.scraped_at > self._settings.staleness:
            self._mark_stale(endpoint, f"last good scrape is older than {self._settings.staleness}s")
        target.started = now
        try:
            target.client.start_get(self._settings.timeout, target.on_outcome)
        except Exception as exc:
            log.exception("cannot start a scrape of endpoint %s", target.endpoint_id)
            self._scraped(target, exc)

    def _scraped(self, target: _Target, outcome: Outcome) -> None:
        self.scrapes += 1
        if self._targets.get(target.endpoint_id) is not target:
            return
        endpoint = self._pool.get(target.endpoint_id)
        if endpoint is None:
            return
        load = None
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            parsed = self._parse(outcome, self._settings.engine_for(endpoint))
        except _EXPECTED as exc:
            self._mark_stale(endpoint, exc)
        except Exception as exc:
            # Whatever a model server sends must not end this endpoint's polling for good.
            log.error("unexpected error scraping endpoint %s", target.endpoint_id, exc_info=exc)
            self._mark_stale(endpoint, exc)
        else:
            was_stale = endpoint.metrics.stale and endpoint.metrics.scraped_at > 0
            endpoint.metrics = parsed.apply(endpoint.metrics, self._clock())
            if was_stale:
                log.info("metrics of endpoint %s are fresh again", target.endpoint_id)
            load = (parsed.waiting, parsed.running, parsed.kv_usage)
        # From when this scrape was due, not when its timer fired: timers firing late do not add up.
        due = target.cadence.scraped(target.due, self._clock(), load)
        assert self._loop is not None
        self._arm(target, due, self._loop)

    @staticmethod
    def _parse(body: bytes, engine: EngineSpec) -> ParsedMetrics:
        parsed = parse_metrics(body.decode("utf-8", errors="replace"), engine)
        if not parsed.has_load:
            raise ScrapeError(f"no {engine.name} load metrics in the exposition")
        return parsed

    @staticmethod
    def _mark_stale(endpoint: Endpoint, reason: BaseException | str) -> None:
        if not endpoint.metrics.stale:
            log.warning("metrics of endpoint %s are stale: %s", endpoint.id, str(reason) or type(reason).__name__)
            endpoint.metrics = dataclasses.replace(endpoint.metrics, stale=True)
        else:
            log.debug("scrape of endpoint %s failed: %r", endpoint.id, reason)
