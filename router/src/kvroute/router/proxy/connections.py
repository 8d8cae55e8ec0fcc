"""The proxy's client connections: bounded in number and in time, and every parser-level error answered in JSON.

aiohttp alone keeps a connection that never completes a request for an hour, and accepts connections until the
process runs out of file descriptors, after which every client fails. `ConnectionGuard` bounds both:

- **Header read**: a new connection must deliver its first request's headers within `header_timeout` seconds
  (none, part of them: the same), or it is closed.
- **Keep-alive idle**: between requests a connection may stay silent for `keepalive_timeout` seconds; the next
  request's headers must be complete by then (aiohttp's keep-alive timer, which also fires on partial headers).
- **Body read**: the handler gives the body `body_timeout` seconds in all (`app`), then answers 408 and closes.
- **Connection cap**: at most `max_connections` open at once. A connection arriving at the cap closes the
  oldest connection that is waiting for a request (never one with a request in progress) to make room; when every
  connection has a request in progress, the new one gets a 503 and is closed. The first time the cap is reached,
  and then at most once a minute, a warning says so.

`kvroute_proxy_connections` is the number open; `kvroute_proxy_connections_closed_total{reason}` counts the
connections the guard closed: `refused` (at the cap, all busy), `evicted` (idle, closed for a newcomer),
`header_timeout`, `body_timeout`.

A request aiohttp's parser rejects (conflicting `Content-Length` and `Transfer-Encoding`, a bad chunk size, a bad
header, a request line over the limit) is answered by `GuardedHandler.handle_error` with an OpenAI-style JSON
error that names the status but echoes nothing of the request (aiohttp's own answer is plain text quoting it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from kvroute.router.requestcontrol.body import RequestError

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_KEEPALIVE_TIMEOUT = 30.0
DEFAULT_BODY_TIMEOUT = 60.0
CAP_WARNING_INTERVAL = 60.0
CLOSE_REASONS = ("refused", "evicted", "header_timeout", "body_timeout")

_PARSER_ERRORS = {
    400: ("the request is not valid HTTP", "bad_http_request"),
    413: ("the request is too large", "body_too_large"),
    414: ("the request line is too long", "uri_too_long"),
    431: ("the request headers are too large", "headers_too_large"),
    500: ("internal error", "internal_error"),
    504: ("the request timed out", "timeout"),
}


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT  # seconds from accept to the first request's headers
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT  # seconds a connection may wait for its next request
    body_timeout: float = DEFAULT_BODY_TIMEOUT  # seconds to receive a request body, in all


def error_bytes(error: RequestError) -> bytes:
    """A complete HTTP/1.1 answer with `error`'s JSON body that closes the connection, for a bare transport."""
    body = error.json_bytes()
    head = (
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_REFUSED = error_bytes(RequestError(503, "the router has too many open connections", "too_many_connections"))


class ConnectionGuard:
    """The open connections of one server (oldest first), the cap on them, and the count of those it closed."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._open: dict[GuardedHandler, None] = {}
        self.closed = dict.fromkeys(CLOSE_REASONS, 0)
        self._warned_at: float | None = None
        self._registration: tuple[CollectorRegistry, Collector] | None = None

    @property
    def open(self) -> int:
        return len(self._open)

    def admit(self, handler: GuardedHandler) -> bool:
        """Whether `handler`'s new connection may stay; at the cap an idle one is closed for it, if any."""
        if len(self._open) >= self.limits.max_connections:
            self._warn_cap()
            idle = next((h for h in self._open if h.idle), None)
            if idle is None:
                self.closed["refused"] += 1
                return False
            self.drop(idle, "evicted")
        self._open[handler] = None
        return True

    def drop(self, handler: GuardedHandler, reason: str) -> None:
        self.closed[reason] += 1
        self._open.pop(handler, None)
        handler.force_close()

    def forget(self, handler: GuardedHandler) -> None:
        self._open.pop(handler, None)

    def _warn_cap(self) -> None:
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= CAP_WARNING_INTERVAL:
            self._warned_at = now
            log.warning(
                "the proxy reached its cap of %d open connections: closing idle ones, refusing new ones while all "
                "are busy (see kvroute_proxy_connections_closed_total)",
                self.limits.max_connections,
            )

    def register(self, registry: CollectorRegistry) -> None:
        """Exposes the guard's metrics in `registry` until `unregister`."""
        self._registration = (registry, _GuardCollector(self))
        registry.register(self._registration[1])

    def unregister(self) -> None:
        if self._registration is not None:
            registry, collector = self._registration
            registry.unregister(collector)
            self._registration = None


class _GuardCollector(Collector):
    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard

    def collect(self) -> Iterator[Metric]:
        guard = self._guard
        yield GaugeMetricFamily("kvroute_proxy_connections", "Client connections open.", value=guard.open)
        closed = CounterMetricFamily(
            "kvroute_proxy_connections_closed",
            "Client connections the proxy closed: refused at the cap, evicted idle at the cap, or timed out.",
            labels=["reason"],
        )
        for reason, count in guard.closed.items():
            closed.add_metric([reason], count)
        yield closed


# The guard of the server an application runs on, for handlers that close connections themselves.
GUARD = web.AppKey("kvroute-connection-guard", ConnectionGuard)


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol, with the guard's cap and header timeout and JSON parser errors."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._admitted = False
        self._header_timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        """Waiting for a request's headers (a new connection, or between requests): closing it loses nothing."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self):
            assert isinstance(transport, asyncio.Transport)
            transport.write(_REFUSED)
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._header_timer = self._loop.call_later(self._guard.limits.header_timeout, self._header_deadline)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._guard.forget(self)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self._request_count == 0:  # not one request's headers arrived
            self._guard.drop(self, "header_timeout")

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """The answer to a request aiohttp could not parse or handle: JSON, naming nothing the client sent."""
        if status >= 500:
            log.error("error serving a request", exc_info=exc)
        else:
            log.debug("rejected an unparsable request (%s, status %d)", type(exc).__name__, status)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; no error answer can follow")
        text, code = _PARSER_ERRORS.get(status, ("the request was rejected", "bad_http_request"))
        error = RequestError(status, text, code)
        response = web.Response(status=status, body=error.json_bytes(), content_type="application/json")
        response.force_close()
        return response


class GuardedServer(web.Server):
    """aiohttp's low-level server, making `GuardedHandler`s."""

    def __init__(self, guard: ConnectionGuard, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._guard = guard
        self._handler_kwargs = {k: v for k, v in kwargs.items() if k not in ("request_factory", "handler_cancellation")}

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, self._guard, **self._handler_kwargs)


class GuardedRunner(web.AppRunner):
    """An `AppRunner` serving through a `GuardedServer` with the guard's keep-alive timeout."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=guard.limits.keepalive_timeout, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        kwargs = {k: v for k, v in self._kwargs.items() if k != "handler_cancellation"}
        return GuardedServer(
            self.guard,
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            debug=False,
            **kwargs,
        )
