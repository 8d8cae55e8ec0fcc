"""The scraper's polling, on the scraper's own event loop: a schedule of scrapes and one kept-alive connection per
endpoint.

No task per endpoint and no await per scrape, nor a loop timer per scrape: the endpoints' next scrapes are kept in
one heap, served by one loop timer set for the earliest, which starts every scrape due by then. A scrape sends the
prebuilt GET (`http_client.HttpGetter.start_get`); the protocol callback that completes the answer calls
`_scraped`, which reads it (`metrics_parser.ExpositionReader`: a body identical to the endpoint's previous one is
not parsed again), swaps the endpoint's `metrics` for a new `EndpointMetrics` (one reference assignment: the
serving loop's scorers read `endpoint.metrics` and see either the old object or the new one) and schedules the
next scrape (`cadence.Cadence`). The scrapes in flight all share one timeout, so they time out in the order they
started: one more timer, set for the oldest, bounds them all. Endpoints come and go with `apply` (the pool's
changes, handed over by the scraper); `routed` is the Director's hint that a request was just scheduled to an
endpoint.

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
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from functools import partial

from kvroute.router.datalayer.cadence import Cadence
from kvroute.router.datalayer.http_client import HttpError, HttpGetter, Outcome
from kvroute.router.datalayer.metrics_parser import EngineSpec, ExpositionReader
from kvroute.router.datalayer.pool import EndpointPool, PoolChange
from kvroute.router.framework.endpoint import Endpoint

log = logging.getLogger(__name__)

# Loop timers have a resolution of one millisecond (and may fire that much early): a scrape due within it is due.
_RESOLUTION = 0.001


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

    __slots__ = (
        "cadence",
        "client",
        "due",
        "endpoint",
        "endpoint_id",
        "engine",
        "on_outcome",
        "reader",
        "scheduled",
        "started",
    )

    def __init__(self, endpoint_id: str, client: HttpGetter, cadence: Cadence) -> None:
        self.endpoint_id = endpoint_id
        self.client = client
        self.cadence = cadence
        self.reader = ExpositionReader()
        self.endpoint: Endpoint | None = None  # the pool's object the engine was chosen for
        self.engine: EngineSpec | None = None
        self.scheduled = False  # waiting for its next scrape (neither in flight nor dropped)
        self.due = 0.0  # when the next scrape is due, while scheduled
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
        # (due, tie-breaker, target): a heap. An entry whose target was scheduled anew or dropped since is skipped.
        self._schedule: list[tuple[float, int, _Target]] = []
        self._entries = itertools.count()
        self._wakeup: asyncio.TimerHandle | None = None
        self._wakeup_at = math.inf  # when `_wakeup` fires; -inf while `_wake` runs (it sets the next one)
        self._in_flight: dict[_Target, float] = {}  # -> when it times out; oldest first, as they share the timeout
        self._expiry: asyncio.TimerHandle | None = None  # set for the oldest in flight
        self._closing: set[asyncio.Task[None]] = set()
        self.polled: frozenset[str] = frozenset()  # ids of the endpoints polled; swapped whole, readable anywhere
        self.scrapes = 0  # ended (well or badly) so far

    def apply(self, change: PoolChange) -> None:
        """Stop polling the removed endpoints (closing their connections) and start polling the added ones."""
        for endpoint in change.removed:
            target = self._targets.pop(endpoint.id, None)
            if target is not None:
                self._drop(target)
        self._loop = self._loop or asyncio.get_running_loop()
        now = self._clock()
        for endpoint in change.added:
            if endpoint.id not in self._targets:
                target = self._targets[endpoint.id] = self._target(endpoint)
                self._schedule_at(target, now)
        self.polled = frozenset(self._targets)

    def routed(self, endpoint_id: str) -> None:
        target = self._targets.get(endpoint_id)
        if target is None:
            return
        now = self._clock()
        if not target.scheduled:  # in flight: its answer schedules the next scrape, on the fast cadence
            target.cadence.routed(now, target.started, now)
            return
        due = target.cadence.routed(now, target.started, target.due)
        if due < target.due:
            if due <= now:
                target.scheduled = False
                self._scrape(target)
            else:
                self._schedule_at(target, due)

    async def close(self) -> None:
        """Stop polling every endpoint; returns once every connection is closed."""
        targets, self._targets = list(self._targets.values()), {}
        self.polled = frozenset()
        for target in targets:
            self._drop(target)
        self._schedule.clear()
        for timer in (self._wakeup, self._expiry):
            if timer is not None:
                timer.cancel()
        self._wakeup, self._wakeup_at, self._expiry = None, math.inf, None
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _target(self, endpoint: Endpoint) -> _Target:
        settings = self._settings
        client = HttpGetter(endpoint.address, endpoint.port, "/metrics", max_body_bytes=settings.max_body_bytes)
        target = _Target(endpoint.id, client, settings.cadence())
        target.on_outcome = partial(self._scraped, target)
        return target

    def _drop(self, target: _Target) -> None:
        target.scheduled = False
        self._in_flight.pop(target, None)
        assert self._loop is not None
        task = self._loop.create_task(target.client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _schedule_at(self, target: _Target, due: float) -> None:
        target.scheduled, target.due = True, due
        heapq.heappush(self._schedule, (due, next(self._entries), target))
        if due < self._wakeup_at:
            self._wake_at(due)

    def _wake_at(self, when: float) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
        assert self._loop is not None
        self._wakeup_at = when
        self._wakeup = self._loop.call_later(max(0.0, when - self._clock()), self._wake)

    def _wake(self) -> None:
        """Start the scrapes that are due."""
        self._wakeup, self._wakeup_at = None, -math.inf
        schedule = self._schedule
        horizon = self._clock() + _RESOLUTION
        while schedule and schedule[0][0] <= horizon:
            due, _, target = heapq.heappop(schedule)
            if target.scheduled and target.due == due:
                target.scheduled = False
                self._scrape(target)
        self._wakeup_at = math.inf
        if schedule:
            self._wake_at(schedule[0][0])

    def _scrape(self, target: _Target) -> None:
        endpoint = self._pool.get(target.endpoint_id)
        if endpoint is None or self._targets.get(target.endpoint_id) is not target:
            return  # left the pool; `apply` drops it
        now = self._clock()
        settings = self._settings
        metrics = endpoint.metrics
        if not metrics.stale and now - metrics.scraped_at > settings.staleness:
            self._mark_stale(endpoint, f"last good scrape is older than {settings.staleness}s")
        target.started = now
        in_flight = self._in_flight
        in_flight[target] = now + settings.timeout
        if self._expiry is None:
            assert self._loop is not None
            self._expiry = self._loop.call_later(settings.timeout, self._expire)
        try:
            target.client.start_get(None, target.on_outcome)
        except Exception as exc:
            log.exception("cannot start a scrape of endpoint %s", target.endpoint_id)
            self._scraped(target, exc)

    def _expire(self) -> None:
        """Time out the scrapes in flight for longer than the timeout (the oldest first)."""
        self._expiry = None
        in_flight = self._in_flight
        now = self._clock()
        while in_flight:
            target, deadline = next(iter(in_flight.items()))
            if deadline > now:
                assert self._loop is not None
                self._expiry = self._loop.call_later(deadline - now, self._expire)
                return
            target.client.close()  # so a late answer is never read as the next one's
            self._scraped(target, TimeoutError(f"no complete answer in {self._settings.timeout}s"))

    def _scraped(self, target: _Target, outcome: Outcome) -> None:
        self.scrapes += 1
        if self._in_flight.pop(target, None) is None:
            return  # timed out or dropped meanwhile
        endpoint = self._pool.get(target.endpoint_id)
        if endpoint is None:
            return
        load = None
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            if endpoint is not target.endpoint:  # new, or relabelled: its engine may have changed
                target.endpoint, target.engine = endpoint, self._settings.engine_for(endpoint)
            assert target.engine is not None
            parsed = target.reader.read(outcome, target.engine)
            if not parsed.has_load:
                raise ScrapeError(f"no {target.engine.name} load metrics in the exposition")
        except _EXPECTED as exc:
            self._mark_stale(endpoint, exc)
        except Exception as exc:
            # Whatever a model server sends must not end this endpoint's polling for good.
            log.error("unexpected error scraping endpoint %s", target.endpoint_id, exc_info=exc)
            self._mark_stale(endpoint, exc)
        else:
            previous = endpoint.metrics
            endpoint.metrics = parsed.apply(previous, self._clock())
            if previous.stale and previous.scraped_at > 0:
                log.info("metrics of endpoint %s are fresh again", target.endpoint_id)
            load = (parsed.waiting, parsed.running, parsed.kv_usage)
        # From when this scrape was due, not when it started: late starts do not add up.
        self._schedule_at(target, target.cadence.scraped(target.due, self._clock(), load))

    @staticmethod
    def _mark_stale(endpoint: Endpoint, reason: BaseException | str) -> None:
        if not endpoint.metrics.stale:
            log.warning("metrics of endpoint %s are stale: %s", endpoint.id, str(reason) or type(reason).__name__)
            endpoint.metrics = dataclasses.replace(endpoint.metrics, stale=True)
        else:
            log.debug("scrape of endpoint %s failed: %r", endpoint.id, reason)
