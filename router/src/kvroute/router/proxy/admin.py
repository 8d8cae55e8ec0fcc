"""The admin server: `POST /admin/reload`, on an address of its own, never on the API port.

It listens on `AdminSettings.host:port` (`--admin-host`, default 127.0.0.1, and `--admin-port`; without that flag
there is no admin server). The API port may face every client; this one should face the operator only.

`POST /admin/reload` re-reads the `--config` file through the `ConfigHolder`: 200 with the plugins and profiles
now serving, or an error and the old configuration keeps serving:

- 403 for a browser's request (it has an `Origin` or `Sec-Fetch-Site` header): a web page must not be able to
  reload the router of whoever visits it;
- 415 for the body types of HTML forms (none is needed): a page may post those cross-origin without a CORS
  preflight, any other type needs one, and this server grants none;
- 429 (with `Retry-After`) for a reload while one runs or within `min_reload_interval` seconds of the last;
- 413 for a file over `max_config_bytes` (it is not parsed), 400 for one that cannot be read or is rejected
  (every `ConfigError` message in `error.details`).

On a router of several workers (`--workers`), worker 0 serves these routes and, once it reloaded, hands the same
document to its siblings (`reload_siblings`); the answer's `workers` tells how many reloaded, and names those
that did not (`failed`).

The file is read and parsed in a worker thread (`ConfigHolder.reload`): requests on the API port keep flowing
while a large document is parsed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from kvroute.router.config.errors import ConfigError
from kvroute.router.config.reload import MAX_CONFIG_BYTES, ConfigHolder, ConfigTooLarge, read_config_file
from kvroute.router.proxy.app import error_response, json_errors
from kvroute.router.proxy.connections import ConnectionGuard, ConnectionLimits, GuardedRunner
from kvroute.router.requestcontrol.body import RequestError

log = logging.getLogger(__name__)

MIN_RELOAD_INTERVAL = 1.0
ADMIN_CONNECTIONS = ConnectionLimits(max_connections=64)
_BROWSER_HEADERS = ("origin", "sec-fetch-site")
# The body types a web page may POST cross-origin without a CORS preflight (which this server never grants).
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})


@dataclass(frozen=True)
class AdminSettings:
    port: int
    host: str = "127.0.0.1"
    max_config_bytes: int = MAX_CONFIG_BYTES
    min_reload_interval: float = MIN_RELOAD_INTERVAL  # seconds between two reloads


SiblingsReload = Callable[[str], Awaitable[list[str]]]  # reloads the other workers; what went wrong, per worker


class AdminHandlers:
    def __init__(
        self,
        holder: ConfigHolder,
        config_path: str | None,
        settings: AdminSettings,
        reload_siblings: SiblingsReload | None = None,
    ) -> None:
        self.holder = holder
        self.config_path = config_path
        self.settings = settings
        self.reload_siblings = reload_siblings
        self._running = False
        self._last: float | None = None

    async def reload(self, request: web.Request) -> web.Response:
        refused = _refusal(request) or self._too_soon()
        if refused is not None:
            return error_response(refused)
        if self.config_path is None:
            return error_response(RequestError(400, "the router was started without --config", "no_config_file"))
        path = self.config_path
        self._running, self._last = True, time.monotonic()
        try:
            try:
                text = await asyncio.to_thread(read_config_file, path, self.settings.max_config_bytes)
            except ConfigTooLarge as exc:
                return error_response(RequestError(413, str(exc), "config_too_large"))
            except (OSError, UnicodeDecodeError) as exc:
                return error_response(RequestError(400, f"cannot read {path}: {exc}", "config_unreadable"))
            try:
                config = await self.holder.reload(text)
            except ConfigError as exc:
                error = RequestError(
                    400, "the configuration was rejected; the previous one keeps serving", "invalid_config"
                )
                body = error.body()
                body["error"]["details"] = list(exc.errors)
                return web.json_response(body, status=400)
            failed = [] if self.reload_siblings is None else await self.reload_siblings(text)
        finally:
            self._running = False
        log.info("configuration reloaded from %s", path)
        for problem in failed:
            log.error("reload of a sibling worker failed: %s", problem)
        answer: dict[str, object] = {
            "status": "reloaded",
            "plugins": list(config.plugins),
            "profiles": list(config.profiles),
        }
        if self.reload_siblings is not None:
            answer["workers"] = {"failed": failed}
        return web.json_response(answer)

    def _too_soon(self) -> RequestError | None:
        interval = self.settings.min_reload_interval
        wait = 0.0 if self._last is None else self._last + interval - time.monotonic()
        if not self._running and wait <= 0:
            return None
        retry = max(1, math.ceil(wait))
        message = f"a reload is running or ran less than {interval:g}s ago; retry in {retry}s"
        return RequestError(429, message, "reload_rate_limited", headers={"Retry-After": str(retry)})


def _refusal(request: web.Request) -> RequestError | None:
    if any(name in request.headers for name in _BROWSER_HEADERS):
        return RequestError(403, "the admin API does not accept requests from browsers", "browser_request")
    if request.content_type in _FORM_TYPES:
        return RequestError(
            415, f"the admin API does not accept {request.content_type} bodies", "unsupported_media_type"
        )
    return None


def build_admin_app(handlers: AdminHandlers) -> web.Application:
    app = web.Application(client_max_size=64 * 1024, middlewares=[json_errors])
    app.router.add_route("POST", "/admin/reload", handlers.reload)
    return app


class AdminServer:
    """The admin routes of `holder`, served on `settings.host:settings.port` between `start` and `stop`."""

    def __init__(
        self,
        holder: ConfigHolder,
        config_path: str | None,
        settings: AdminSettings,
        reload_siblings: SiblingsReload | None = None,
    ) -> None:
        self.settings = settings
        self._app = build_admin_app(AdminHandlers(holder, config_path, settings, reload_siblings))
        self._runner: GuardedRunner | None = None

    @property
    def port(self) -> int:
        assert self._runner is not None, "not started"
        port: int = self._runner.addresses[0][1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def start(self) -> None:
        runner = GuardedRunner(self._app, ConnectionGuard(ADMIN_CONNECTIONS), access_log=None)
        await runner.setup()
        self._runner = runner
        await web.TCPSite(runner, self.settings.host, self.settings.port).start()
        log.info("admin routes listening on %s", self.base_url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
