"""The ext_proc front door's listeners (`kvroute router --mode ext-proc` runs a `RouterCore` with this door).

`ExtProcDoor` runs on a Director it does not own (the `RouterCore`'s):

- the ext_proc gRPC server (default port 9002), TLS unless `secure_serving` is off, also answering gRPC health;
- a plain gRPC health server (default 9003) for probes: `liveness`, `readiness`, the ext_proc service name;
- Prometheus `/metrics` over HTTP (default 9090).

Both gRPC servers are `h2server.GrpcServer`s (gRPC on the h2 HTTP/2 stack), for their CPU per stream (docs/extproc.md,
"gRPC servers compared").

Ports are bound without SO_REUSEPORT unless `reuse_port` (the workers of one router), so a second router on a
taken port fails at start instead of silently sharing it. The largest gRPC message accepted is the body limit
plus 1 MiB, so a BUFFERED body at the limit arrives whole and gets its 413 from the Director. `stop()` reports
NOT_SERVING, then lets streams in flight finish for `shutdown_grace` seconds before cancelling them (each
cancelled request still completes once).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from kvroute.router.extproc.h2server import GrpcServer
from kvroute.router.extproc.health import HealthService
from kvroute.router.extproc.processor import Processor, ResponseMode
from kvroute.router.extproc.service import ExtProcService
from kvroute.router.extproc.tls import server_context
from kvroute.router.observability.page import metrics_page
from kvroute.router.requestcontrol.director import Director

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtProcSettings:
    host: str = "127.0.0.1"
    port: int = 9002
    health_port: int = 9003
    metrics_port: int = 9090
    secure_serving: bool = True
    cert_path: str | None = None  # a directory with tls.crt and tls.key; None: self-signed, made at start
    response_mode: ResponseMode = ResponseMode.FULL
    max_destinations: int = 1
    gie_conformance: bool = False  # honour the GIE conformance suite's test headers (extproc/conformance.py)
    shutdown_grace: float = 10.0
    reuse_port: bool = False  # share the ports with the pod's other workers (SO_REUSEPORT)


class ExtProcDoor:
    def __init__(self, director: Director, settings: ExtProcSettings | None = None) -> None:
        self.director = director
        self.settings = settings = settings or ExtProcSettings()
        self.processor = Processor(
            director, settings.response_mode, settings.max_destinations, gie_conformance=settings.gie_conformance
        )
        self.health = HealthService(director.not_ready_reason)
        self.port = self.health_port = self.metrics_port = 0  # the ports bound, once started
        self._servers: list[GrpcServer] = []
        self._metrics: web.AppRunner | None = None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        settings = self.settings
        context = None
        if settings.secure_serving:
            context = await asyncio.to_thread(server_context, settings.host, settings.cert_path)
        methods = {**ExtProcService(self.processor).methods(), **self.health.methods()}
        main = GrpcServer(methods, max_message_bytes=self.director.max_body_bytes + 1024 * 1024)
        self._servers.append(main)
        self.port = await main.start(settings.host, settings.port, context, reuse_port=settings.reuse_port)
        health = GrpcServer(self.health.methods())
        self._servers.append(health)
        self.health_port = await health.start(settings.host, settings.health_port, reuse_port=settings.reuse_port)
        app = web.Application()
        metrics = self.director.ledger.metrics
        if metrics is not None:
            app.router.add_get("/metrics", metrics_page(metrics))
        self._metrics = web.AppRunner(app, access_log=None)
        await self._metrics.setup()
        reuse_port = settings.reuse_port or None
        await web.TCPSite(self._metrics, settings.host, settings.metrics_port, reuse_port=reuse_port).start()
        self.metrics_port = self._metrics.addresses[0][1]
        log.info(
            "ext_proc listening on %s:%d (%s, response mode %s), health on %d, metrics on %d, for %d endpoints",
            settings.host,
            self.port,
            "TLS" if settings.secure_serving else "plaintext",
            settings.response_mode.value,
            self.health_port,
            self.metrics_port,
            len(self.director.pool),
        )
        if settings.gie_conformance:
            log.warning(
                "GIE conformance mode: clients choose their endpoints with test-epp-endpoint-selection; "
                "for conformance runs only"
            )

    async def stop(self) -> None:
        self.health.stopping = True
        servers, self._servers = self._servers, []
        await asyncio.gather(*(server.stop(self.settings.shutdown_grace) for server in servers))
        if self._metrics is not None:
            await self._metrics.cleanup()
            self._metrics = None
