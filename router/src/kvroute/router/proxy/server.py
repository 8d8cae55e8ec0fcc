"""One proxy router process, assembled: configuration, endpoint pool, metrics scraper, Director, HTTP server.

`ProxyServer` is what `kvroute router --mode proxy` runs, and what tests start in-process when they need to look
inside (plugin state, the Director). The configuration comes from `config_text` (the built-in default when
None); with `config_path` the file is also watched and `POST /admin/reload` re-reads it. The scraper's settings
(`metrics` section, `scrape_interval` overriding its interval) are read once at start: a reload that changes them
takes effect at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from kvroute.router.config.builder import Registry
from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.datalayer.scraper import MetricsScraper
from kvroute.router.framework import Endpoint
from kvroute.router.observability import RouterMetrics
from kvroute.router.proxy.app import build_app
from kvroute.router.proxy.upstream import create_session
from kvroute.router.requestcontrol.director import DEFAULT_MAX_BODY_BYTES, Director

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    config_path: str | None = None
    scrape_interval: float | None = None  # None: the configuration's metrics.scrapeInterval
    watch_interval: float = 1.0  # seconds between checks of config_path; 0 disables watching
    shutdown_grace: float = 10.0


class ProxyServer:
    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        registry: Registry,
        settings: ProxySettings | None = None,
        *,
        config_text: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        """Raises `ConfigError` for a rejected configuration, `ValueError` for inconsistent settings."""
        self.settings = settings or ProxySettings()
        self.metrics = RouterMetrics()
        self.holder = ConfigHolder.load(registry, config_text, metrics=self.metrics)
        self.pool = EndpointPool(endpoints)
        self.director = Director(self.holder, self.pool, self.metrics, max_body_bytes=self.settings.max_body_bytes)
        spec = self.holder.current.metrics
        interval = self.settings.scrape_interval or spec.scrape_interval
        self.scraper = MetricsScraper(
            self.pool,
            interval=interval,
            timeout=spec.timeout,
            staleness=spec.staleness_threshold,
            default_engine=spec.engine,
        )
        self._session = session
        self._owns_session = session is None
        self._runner: web.AppRunner | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._runner is not None, "not started"
        address = self._runner.addresses[0]
        port: int = address[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def start(self) -> None:
        settings = self.settings
        if self._session is None:
            self._session = create_session()
        await self.scraper.start()
        app = build_app(self.director, self._session, metrics=self.metrics, config_path=settings.config_path)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=settings.shutdown_grace
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, settings.host, settings.port, backlog=2048).start()
        if settings.config_path is not None and settings.watch_interval > 0:
            self._watch = asyncio.get_running_loop().create_task(
                self.holder.watch_file(settings.config_path, settings.watch_interval), name="kvroute-config-watch"
            )
        log.info("proxy listening on %s for %d endpoints", self.base_url, len(self.pool))

    async def stop(self) -> None:
        """Stops accepting, lets requests in flight finish (up to `shutdown_grace`), then stops the rest."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.scraper.stop()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ProxyServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
