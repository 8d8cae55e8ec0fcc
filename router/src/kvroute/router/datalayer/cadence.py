"""When an endpoint is scraped next: fast where load changes or requests are routed, slow where nothing happens.

Every endpoint starts at the configured `interval` (fast). After each scrape (start to start):

    next interval = interval                              if the load read changed (waiting, running, kv_usage),
                                                          or a request was routed there less than `hold` ago
                  = min(2 * current interval, slowest)    otherwise (unchanged load, or a failed scrape)

so an idle endpoint backs off interval, 2x, 4x, ... up to `slowest`, and comes back to `interval` at its first
change. A routed request (`routed`) also pulls the next scrape in to `max(now, last start + interval)`: an endpoint
polled slowly is scraped at once, one polled fast keeps its cadence; either way no endpoint is scraped more often
than once per `interval`, the cost of plain fixed-interval polling. `slowest` is chosen by the scraper so that
metrics never look fresh past the staleness window nor older than what the router's plugins trust.

Pure arithmetic on the times it is given (the scraper's `time.monotonic()`); it never reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

Load = tuple[int | None, int | None, float | None]
"""What a scrape read of an endpoint's load: waiting, running, kv_usage (None: absent, or the scrape failed)."""


@dataclass(slots=True)
class Cadence:
    interval: float  # the configured (fastest) interval
    slowest: float
    hold: float  # an endpoint a request was routed to stays fast this long
    current: float = 0.0  # the interval in use; 0: not set yet (the configured one)
    load: Load | None = None  # what the last good scrape read
    routed_until: float = float("-inf")

    def __post_init__(self) -> None:
        if not 0 < self.interval <= self.slowest:
            raise ValueError(f"need 0 < interval ({self.interval}) <= slowest ({self.slowest})")
        self.current = self.current or self.interval

    def scraped(self, started: float, now: float, load: Load | None) -> float:
        """A scrape started at `started` ended at `now` with `load` (None: it failed). Returns when the next one is
        due (never before `now`)."""
        changed = load is not None and load != self.load
        if load is not None:
            self.load = load
        if changed or now < self.routed_until:
            self.current = self.interval
        else:
            self.current = min(2 * self.current, self.slowest)
        return max(started + self.current, now)

    def routed(self, now: float, started: float, due: float) -> float:
        """A request was routed to the endpoint at `now`; its last scrape started at `started` and the next is due at
        `due`. Returns when the next scrape is due now (never later than `due`)."""
        self.routed_until = now + self.hold
        self.current = self.interval
        return min(due, max(now, started + self.interval))
