"""The proxy front door: the HTTP server of the OpenAI-compatible API (`app`) on a Director it does not own.

With `kvroute router --mode both` the ext_proc server shares that Director (`runtime.build.build_router` wires
them). Client connections are bounded in number and time (`connections.ConnectionLimits`). With `settings.admin`
the door also serves the admin routes on their own address (`admin`), where `POST /admin/reload` re-reads
`config_path` (the file the configuration was read from).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from kvroute.router.proxy.admin import AdminServer, AdminSettings, SiblingsReload
from kvroute.router.proxy.app import build_app
from kvroute.router.proxy.connections import GUARD, ConnectionGuard, ConnectionLimits, GuardedRunner
from kvroute.router.proxy.upstream import UpstreamSettings, create_session
from kvroute.router.requestcontrol.director import Director

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxyDoorSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    shutdown_grace: float = 10.0
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)  # timeouts and retries
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)  # client connections' cap, timeouts
    admin: AdminSettings | None = None  # where the admin routes are served; None: not served
    reuse_port: bool = False  # share the port with the pod's other workers (SO_REUSEPORT)


class ProxyDoor:
    def __init__(
        self,
        director: Director,
        settings: ProxyDoorSettings | None = None,
        *,
        config_path: str | None = None,
        session: aiohttp.ClientSession | None = None,
        reload_siblings: SiblingsReload | None = None,
    ) -> None:
        """The connect and idle timeouts of `settings.upstream` apply to the session the door creates, not to an
        injected one; its first-byte and total timeouts and its retries apply to both. `reload_siblings` is worker 0's
        way to hand an admin reload to the pod's other workers (`runtime.worker`)."""
        self.director = director
        self.settings = settings or ProxyDoorSettings()
        self.host = self.settings.host
        self._session = session
        self._owns_session = session is None
        self._runner: web.AppRunner | None = None
        self._guard: ConnectionGuard | None = None
        self.admin: AdminServer | None = None
        if self.settings.admin is not None:
            self.admin = AdminServer(director.holder, config_path, self.settings.admin, reload_siblings)

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
            upstream = settings.upstream
            self._session = create_session(upstream.connect_timeout, upstream.idle_timeout)
        limits = settings.connections
        app = build_app(self.director, self._session, upstream=settings.upstream, body_timeout=limits.body_timeout)
        guard = app[GUARD] = ConnectionGuard(limits)
        metrics = self.director.ledger.metrics
        if metrics is not None:
            guard.register(metrics.registry)
        self._guard = guard
        self._runner = GuardedRunner(
            app, guard, handler_cancellation=True, access_log=None, shutdown_timeout=settings.shutdown_grace
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, settings.port, backlog=2048, reuse_port=settings.reuse_port or None)
        await site.start()
        log.info("proxy listening on %s for %d endpoints", self.base_url, len(self.director.pool))
        if self.admin is not None:
            await self.admin.start()

    async def stop(self) -> None:
        """Stops accepting, lets requests in flight finish (up to `shutdown_grace`), then stops the rest."""
        if self.admin is not None:
            await self.admin.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._guard is not None:
            self._guard.unregister()
            self._guard = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
