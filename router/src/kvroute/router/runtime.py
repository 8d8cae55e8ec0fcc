"""What every front door of one router process shares: configuration, endpoint pool, metrics scraper, Director.

`RouterCore` is assembled once per process; the front doors (the OpenAI proxy, the Envoy ext_proc server) are
built on it and only translate their protocol into Director calls. With `kvroute router --mode both` the two
front doors share one core, so a request's prefix affinity and in-flight accounting do not depend on which door it
came through.

The configuration comes from `config_text` (the built-in default when None); with `config_path` the file is also
watched. The scraper's settings (`metrics` section, `scrape_interval` overriding its interval) are read once at
start: a reload that changes them takes effect at the next start.

Readiness, for every door's health answer: at least one endpoint has fresh metrics (a configuration is always
loaded once the core exists).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kvroute.router.config.builder import Registry
from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.datalayer.scraper import MetricsScraper
from kvroute.router.framework import Endpoint
from kvroute.router.observability import RouterMetrics
from kvroute.router.requestcontrol.director import DEFAULT_MAX_BODY_BYTES, Director
from kvroute.router.requestcontrol.endpoints import forget_removed_endpoints


@dataclass(frozen=True)
class CoreSettings:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    config_path: str | None = None
    scrape_interval: float | None = None  # None: the configuration's metrics.scrapeInterval
    watch_interval: float = 1.0  # seconds between checks of config_path; 0 disables watching


def not_ready_reason(pool: EndpointPool) -> str | None:
    """None when the router can serve; otherwise why not."""
    endpoints = pool.snapshot()
    if not endpoints:
        return "no endpoints"
    if all(e.metrics.stale for e in endpoints):
        return "no endpoint has fresh metrics"
    return None


class RouterCore:
    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        registry: Registry,
        settings: CoreSettings | None = None,
        *,
        config_text: str | None = None,
    ) -> None:
        """Raises `ConfigError` for a rejected configuration, `ValueError` for inconsistent settings."""
        self.settings = settings or CoreSettings()
        self.metrics = RouterMetrics()
        self.holder = ConfigHolder.load(registry, config_text, metrics=self.metrics)
        self.pool = EndpointPool(endpoints)
        self.director = Director(self.holder, self.pool, self.metrics, max_body_bytes=self.settings.max_body_bytes)
        forget_removed_endpoints(self.pool, self.holder, self.metrics)
        spec = self.holder.current.metrics
        self.scraper = MetricsScraper(
            self.pool,
            interval=self.settings.scrape_interval or spec.scrape_interval,
            timeout=spec.timeout,
            staleness=spec.staleness_threshold,
            default_engine=spec.engine,
        )
        self._watch: asyncio.Task[None] | None = None

    def not_ready_reason(self) -> str | None:
        return not_ready_reason(self.pool)

    async def start(self) -> None:
        await self.scraper.start()
        settings = self.settings
        if settings.config_path is not None and settings.watch_interval > 0:
            self._watch = asyncio.get_running_loop().create_task(
                self.holder.watch_file(settings.config_path, settings.watch_interval), name="kvroute-config-watch"
            )

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self.scraper.stop()


class FrontDoor(Protocol):
    """A server translating one protocol into Director calls, built on a core it does not own."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Stops accepting and lets requests in flight finish (up to the door's grace period)."""


class Router:
    """One router process: a core and its front doors, started in that order and stopped in reverse."""

    def __init__(self, core: RouterCore, doors: Sequence[FrontDoor]) -> None:
        self.core = core
        self.doors = tuple(doors)

    async def start(self) -> None:
        await self.core.start()
        started: list[FrontDoor] = []
        try:
            for door in self.doors:
                await door.start()
                started.append(door)
        except BaseException:
            for door in reversed(started):
                await door.stop()
            await self.core.stop()
            raise

    async def stop(self) -> None:
        for door in reversed(self.doors):
            await door.stop()
        await self.core.stop()

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
