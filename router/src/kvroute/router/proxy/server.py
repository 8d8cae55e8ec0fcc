"""The proxy front door: the HTTP server of the OpenAI-compatible API (`app`) on a Director it does not own.

With `kvroute router --mode both` the ext_proc server shares that Director (`runtime.build.build_router` wires
them). With `config_path` (the file the configuration was read from) `POST /admin/reload` re-reads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from kvroute.router.proxy.app import build_app
from kvroute.router.proxy.upstream import DEFAULT_IDLE_TIMEOUT, create_session
from kvroute.router.requestcontrol.director import Director

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxyDoorSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    shutdown_grace: float = 10.0
    upstream_idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # seconds of upstream silence before failing; 0: none


class ProxyDoor:
    def __init__(
        self,
        director: Director,
        settings: ProxyDoorSettings | None = None,
        *,
        config_path: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        """`settings.upstream_idle_timeout` applies to the session the door creates, not to an injected one."""
        self.director = director
        self.settings = settings or ProxyDoorSettings()
        self.host = self.settings.host
        self._config_path = config_path
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
        settings = self.settings
        if self._session is None:
            self._session = create_session(idle_timeout=settings.upstream_idle_timeout)
        app = build_app(self.director, self._session, config_path=self._config_path)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=settings.shutdown_grace
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, settings.port, backlog=2048).start()
        log.info("proxy listening on %s for %d endpoints", self.base_url, len(self.director.pool))

    async def stop(self) -> None:
        """Stops accepting, lets requests in flight finish (up to `shutdown_grace`), then stops the rest."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
