"""`Breakers`: one circuit breaker per endpoint, kept by the `Ledger`; an endpoint whose breaker is open is no
candidate of the scheduler.

Each breaker is in one of three states:

- closed: requests flow. Every failure the front door reports (a 5xx or 429 answer, no first byte within the
  first-byte timeout) adds one to a count of consecutive failures that any success resets; `failure_threshold`
  in a row open the breaker. A connection failure (refused, reset or closed before the status line, connect
  timeout) opens it at once: nothing is listening there.
- open: the endpoint is left out of the candidates for `open_duration` seconds. A breaker opened by a
  connection failure also closes as soon as the endpoint's metrics are scraped again (the server is back).
- half-open: once `open_duration` has passed the endpoint is a candidate for one request at a time, the probe
  (the first request forwarded to it). `success_threshold` successes in a row close the breaker; a failure opens
  it again. A probe with no outcome after `open_duration` (its client left before any answer) lets another go.

`admit` leaves out the endpoints with an open breaker, and those half-open with a probe in flight, unless that
would leave none: then it returns them all, as if no breaker were open (like Envoy's panic mode), so a fleet that
is all failing still gets traffic and its breakers their probes. Only endpoints with a failure on record have a
breaker; a closed one with no failures left is dropped, so the map stays as small as the failing part of the pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvroute.router.datalayer.pool import EndpointPool
    from kvroute.router.framework import Endpoint

CLOSED, OPEN, HALF_OPEN = 0, 1, 2  # the values of the breaker state gauge


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = 5  # consecutive failures that open a closed breaker
    success_threshold: int = 2  # consecutive successes that close a half-open one
    open_duration: float = 10.0  # seconds an open breaker keeps its endpoint out before a probe

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.success_threshold < 1:
            raise ValueError("breaker thresholds must be at least 1")
        if self.open_duration < 0:
            raise ValueError("the breaker's open duration cannot be negative")


StateListener = Callable[[str, int, str | None], None]
"""Called with (endpoint id, new state, reason of an ejection or None) on every change of state."""


class _Breaker:
    __slots__ = ("failures", "opened_at", "probe_at", "state", "successes", "unreachable")

    def __init__(self) -> None:
        self.state = CLOSED
        self.failures = 0
        self.successes = 0
        self.opened_at = 0.0
        self.probe_at: float | None = None  # when the half-open probe was forwarded
        self.unreachable = False  # opened by a connection failure: a fresh scrape closes it


class Breakers:
    def __init__(self, settings: BreakerSettings | None = None, listener: StateListener | None = None) -> None:
        self.settings = settings or BreakerSettings()
        self._listener = listener
        self._breakers: dict[str, _Breaker] = {}

    def state(self, endpoint_id: str) -> int:
        breaker = self._breakers.get(endpoint_id)
        if breaker is None:
            return CLOSED
        self._advance(endpoint_id, breaker, time.monotonic())
        return breaker.state

    def unreachable(self, endpoint_id: str) -> None:
        """A connection to the endpoint failed: its breaker opens at once."""
        breaker = self._breakers.setdefault(endpoint_id, _Breaker())
        breaker.failures += 1
        self._open(endpoint_id, breaker, "unreachable", unreachable=True)

    def failure(self, endpoint_id: str, reason: str) -> None:
        breaker = self._breakers.setdefault(endpoint_id, _Breaker())
        breaker.failures += 1
        breaker.successes = 0
        if breaker.state == HALF_OPEN:
            self._open(endpoint_id, breaker, "probe_failed")
        elif breaker.state == CLOSED and breaker.failures >= self.settings.failure_threshold:
            self._open(endpoint_id, breaker, reason)

    def success(self, endpoint_id: str) -> None:
        breaker = self._breakers.get(endpoint_id)
        if breaker is None:
            return
        if breaker.state == HALF_OPEN:
            breaker.probe_at = None
            breaker.successes += 1
            if breaker.successes >= self.settings.success_threshold:
                self._close(endpoint_id)
        elif breaker.state == CLOSED:
            del self._breakers[endpoint_id]

    def forwarded(self, endpoint_id: str) -> None:
        """A request is being sent to the endpoint: when its breaker is half-open, that request is the probe."""
        breaker = self._breakers.get(endpoint_id)
        if breaker is not None and breaker.state == HALF_OPEN and breaker.probe_at is None:
            breaker.probe_at = time.monotonic()

    def admit(self, pool: EndpointPool, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        """`endpoints` without those whose breaker keeps them out, unless none would be left."""
        breakers = self._breakers
        if not breakers:
            return endpoints
        now = time.monotonic()
        for endpoint_id, breaker in list(breakers.items()):
            endpoint = pool.get(endpoint_id)
            if endpoint is None:
                del breakers[endpoint_id]
            elif breaker.unreachable and breaker.state == OPEN and endpoint.metrics.scraped_at > breaker.opened_at:
                self._close(endpoint_id)
            else:
                self._advance(endpoint_id, breaker, now)
        admitted = tuple(e for e in endpoints if self._admits(e.id, now))
        return admitted or endpoints

    def forget(self, endpoint_id: str) -> None:
        self._breakers.pop(endpoint_id, None)

    def _admits(self, endpoint_id: str, now: float) -> bool:
        breaker = self._breakers.get(endpoint_id)
        if breaker is None or breaker.state == CLOSED:
            return True
        if breaker.state == OPEN:
            return False
        return breaker.probe_at is None or now - breaker.probe_at >= self.settings.open_duration

    def _advance(self, endpoint_id: str, breaker: _Breaker, now: float) -> None:
        if breaker.state == OPEN and now - breaker.opened_at >= self.settings.open_duration:
            breaker.state = HALF_OPEN
            breaker.successes = 0
            breaker.probe_at = None
            self._notify(endpoint_id, HALF_OPEN, None)

    def _open(self, endpoint_id: str, breaker: _Breaker, reason: str, *, unreachable: bool = False) -> None:
        was_open = breaker.state == OPEN
        breaker.state = OPEN
        breaker.opened_at = time.monotonic()
        breaker.probe_at = None
        breaker.successes = 0
        breaker.unreachable = unreachable
        if not was_open:
            self._notify(endpoint_id, OPEN, reason)

    def _close(self, endpoint_id: str) -> None:
        del self._breakers[endpoint_id]
        self._notify(endpoint_id, CLOSED, None)

    def _notify(self, endpoint_id: str, state: int, reason: str | None) -> None:
        if self._listener is not None:
            self._listener(endpoint_id, state, reason)
