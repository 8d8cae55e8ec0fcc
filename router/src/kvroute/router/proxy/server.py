"""The proxy front door, and one proxy router process assembled on it.

`ProxyDoor` is the HTTP server of the OpenAI-compatible API on a `RouterCore` it does not own (with
`kvroute router --mode both` the ext_proc server shares that core). `ProxyServer` is a core plus that door: what
`kvroute router --mode proxy` runs, and what tests start in-process when they need to look inside (plugin state,
the Director). With `config_path` the configuration file is also watched and `POST /admin/reload` re-reads it.
"""

from __future__ import annotations

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
from kvroute.router.proxy.upstream import DEFAULT_IDLE_TIMEOUT, create_session
from kvroute.router.requestcontrol.director import DEFAULT_MAX_BODY_BYTES, Director
from kvroute.router.runtime import CoreSettings, Router, RouterCore

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
    upstream_idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # seconds of upstream silence before failing; 0: none

    def core(self) -> CoreSettings:
        return CoreSettings(self.max_body_bytes, self.config_path, self.scrape_interval, self.watch_interval)


class ProxyDoor:
    def __init__(
        self,
        core: RouterCore,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        shutdown_grace: float = 10.0,
        upstream_idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        """`upstream_idle_timeout` applies to the session the door creates, not to an injected one."""
        self.core = core
        self.host = host
        self._port = port
        self._grace = shutdown_grace
        self._idle_timeout = upstream_idle_timeout
        self._session = session
        self._owns_session = session is None
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._runner is not None, "not started"
        port: int = self._runner.addresses[0][1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._session is None:
            self._session = create_session(idle_timeout=self._idle_timeout)
        core = self.core
        app = build_app(core.director, self._session, metrics=core.metrics, config_path=core.settings.config_path)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=self._grace)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self._port, backlog=2048).start()
        log.info("proxy listening on %s for %d endpoints", self.base_url, len(core.pool))

    async def stop(self) -> None:
        """Stops accepting, lets requests in flight finish (up to `shutdown_grace`), then stops the rest."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None


class ProxyServer(Router):
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
        self.settings = settings = settings or ProxySettings()
        core = RouterCore(endpoints, registry, settings.core(), config_text=config_text)
        self.door = ProxyDoor(
            core,
            settings.host,
            settings.port,
            shutdown_grace=settings.shutdown_grace,
            upstream_idle_timeout=settings.upstream_idle_timeout,
            session=session,
        )
        super().__init__(core, [self.door])

    @property
    def metrics(self) -> RouterMetrics:
        return self.core.metrics

    @property
    def holder(self) -> ConfigHolder:
        return self.core.holder

    @property
    def pool(self) -> EndpointPool:
        return self.core.pool

    @property
    def director(self) -> Director:
        return self.core.director

    @property
    def scraper(self) -> MetricsScraper:
        return self.core.scraper

    @property
    def port(self) -> int:
        return self.door.port

    @property
    def base_url(self) -> str:
        return self.door.base_url
