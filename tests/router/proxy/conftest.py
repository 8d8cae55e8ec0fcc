"""Fixtures for the proxy tests: scriptable fake model servers and in-process proxies, all on 127.0.0.0/8.

The in-process proxy (`ProxyServer`) is a `RouterCore` with the same `ProxyDoor` the `kvroute router` command
runs; tests that need to look inside (plugin state, the recording hook) use it, the others start the real command
(see the integration modules).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kvroute.router.config.builder import Registry
from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.framework import Endpoint
from kvroute.router.observability import RouterMetrics
from kvroute.router.proxy.admin import AdminSettings
from kvroute.router.proxy.connections import ConnectionLimits
from kvroute.router.proxy.server import ProxyDoor, ProxyDoorSettings
from kvroute.router.proxy.upstream import DEFAULT_IDLE_TIMEOUT, UpstreamSettings
from kvroute.router.requestcontrol.breaker import BreakerSettings
from kvroute.router.requestcontrol.director import DEFAULT_MAX_BODY_BYTES
from kvroute.router.runtime import CoreSettings, Router, RouterCore
from tests.support import Processes, ServerProcess, free_port, kvroute_command

# Fake model servers on 127.0.3.x, proxies on 127.0.4.x: away from the simulators' 127.0.0.x.
_FAKE_HOSTS = itertools.cycle(f"127.0.3.{i}" for i in range(1, 255))
_PROXY_HOSTS = itertools.cycle(f"127.0.4.{i}" for i in range(1, 255))

MODEL = "fake-model"


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
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)  # its idle timeout is the one above
    breaker: BreakerSettings | None = None
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    admin: AdminSettings | None = None  # AdminSettings(port=0): admin routes on a port of the proxy's host


class ProxyServer(Router):
    """A proxy router process in-process: a core and its proxy door."""

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        registry: Registry,
        settings: ProxySettings | None = None,
        *,
        config_text: str | None = None,
    ) -> None:
        settings = settings or ProxySettings()
        core_settings = CoreSettings(
            settings.max_body_bytes,
            settings.config_path,
            settings.scrape_interval,
            settings.watch_interval,
            breaker=settings.breaker,
        )
        core = RouterCore(endpoints, registry, core_settings, config_text=config_text)
        upstream = replace(settings.upstream, idle_timeout=settings.upstream_idle_timeout)
        admin = settings.admin
        if admin is not None:
            admin = replace(admin, host=settings.host)
        door_settings = ProxyDoorSettings(
            settings.host, settings.port, settings.shutdown_grace, upstream, settings.connections, admin
        )
        self.door = ProxyDoor(core.director, door_settings, config_path=settings.config_path)
        super().__init__(core, [self.door])

    @property
    def admin_url(self) -> str:
        assert self.door.admin is not None, "started without admin settings"
        return self.door.admin.base_url

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
    def base_url(self) -> str:
        return self.door.base_url


Script = Callable[[web.Request, "FakeServer"], Awaitable[web.StreamResponse]]


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def text_chunk(text: str, finish_reason: str | None = None) -> bytes:
    return sse({"choices": [{"index": 0, "text": text, "finish_reason": finish_reason}]})


async def answer_json(request: web.Request, server: FakeServer) -> web.StreamResponse:
    body = {
        "choices": [{"index": 0, "text": "ok", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 0}},
    }
    return web.json_response(body, headers={"x-inference-pod": server.name, "Keep-Alive": "timeout=60"})


@dataclass
class FakeServer:
    """A model server whose `/v1/completions` answer is a script; it records what it received."""

    name: str
    host: str
    script: Script = answer_json
    waiting: int = 0
    models: list[str] = field(default_factory=lambda: [MODEL])
    received: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.create(self.host, self.port)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.received.append(({k.lower(): v for k, v in request.headers.items()}, await request.json()))
        try:
            return await self.script(request, self)
        except (asyncio.CancelledError, ConnectionError):
            self.disconnected.set()
            raise

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

    async def _metrics(self, request: web.Request) -> web.Response:
        text = (
            f'vllm:num_requests_waiting{{model_name="{MODEL}"}} {self.waiting}\n'
            f'vllm:num_requests_running{{model_name="{MODEL}"}} 0\n'
            f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.0\n'
        )
        return web.Response(text=text)


@pytest.fixture
async def fakes() -> AsyncIterator[Callable[..., Awaitable[FakeServer]]]:
    """`await fakes(name, script=...)` starts a fake model server; all are stopped at teardown."""
    started: list[FakeServer] = []

    async def start(name: str, script: Script = answer_json, **kwargs: Any) -> FakeServer:
        server = FakeServer(name, next(_FAKE_HOSTS), script, **kwargs)
        await server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.stop()


def dead_endpoint() -> Endpoint:
    """An address where nothing listens (a port of a fake host that was never bound)."""
    return Endpoint.create(next(_FAKE_HOSTS), 9)


@pytest.fixture
async def proxies(registry: Registry) -> AsyncIterator[Callable[..., Awaitable[ProxyServer]]]:
    """`await proxies(endpoints, config_text, **settings)` starts an in-process proxy; stopped at teardown."""
    started: list[ProxyServer] = []

    async def start(endpoints: list[Endpoint], config_text: str | None = None, **settings: Any) -> ProxyServer:
        options = ProxySettings(host=next(_PROXY_HOSTS), port=0, **settings)
        server = ProxyServer(endpoints, registry, options, config_text=config_text)
        await server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.stop()


@dataclass(frozen=True)
class Kit:
    """Helpers for test modules, which cannot import this conftest by name."""

    model: str = MODEL
    sse: Callable[[dict[str, Any]], bytes] = sse
    text_chunk: Callable[..., bytes] = text_chunk
    dead_endpoint: Callable[[], Endpoint] = dead_endpoint


@pytest.fixture
def kit() -> Kit:
    return Kit()


class RouterProcess(ServerProcess):
    """One `kvroute router --mode proxy` subprocess, ready once `/readyz` answers 200."""

    def __init__(self, host: str, port: int, argv: list[str]) -> None:
        super().__init__(f"router-{host}-{port}", argv, health_url=f"http://{host}:{port}/readyz", grace=15.0)
        self.host = host
        self.port = port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class RouterFleet(Processes):
    """Starts `kvroute router --mode proxy` subprocesses and stops every one of them at the end."""

    def __call__(
        self, endpoints: str, *args: str, config: Path | None = None, host: str | None = None
    ) -> RouterProcess:
        """Starts a router for `endpoints` (an `--endpoints` value) on `host` (default: the next 127.0.4.x)."""
        host = host or next(_PROXY_HOSTS)
        port = free_port(host)
        argv = kvroute_command("router", "--mode", "proxy", "--endpoints", endpoints)
        argv += ["--host", host, "--port", str(port), *args]
        if config is not None:
            argv += ["--config", str(config)]
        router = RouterProcess(host, port, argv)
        self.started.append(router)
        router.start()
        return router


@pytest.fixture
def routers() -> Iterator[RouterFleet]:
    with RouterFleet() as fleet:
        yield fleet


@pytest.fixture(scope="module")
def module_routers() -> Iterator[RouterFleet]:
    with RouterFleet() as fleet:
        yield fleet


def endpoints_spec(sims: Iterable[Any], role: str | None = None) -> str:
    """The `--endpoints` value for simulator processes (`SimProcess` of the root conftest)."""
    suffix = f";role={role}" if role else ""
    return ",".join(f"{sim.host}:{sim.port}{suffix}" for sim in sims)


@pytest.fixture
def spec_of() -> Callable[..., str]:
    return endpoints_spec
