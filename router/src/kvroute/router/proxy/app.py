"""The OpenAI-compatible proxy's HTTP application: aiohttp handlers that turn HTTP into Director calls.

Routes:

- `POST /v1/completions`, `POST /v1/chat/completions`: `Director.start`, then the upstream answer (see
  `disaggregation`, `upstream`) relayed to the client. A JSON answer with a `Content-Length` of at most
  `MAX_BUFFERED_ANSWER` is read whole and sent in one write; anything else (SSE, unknown length) is streamed chunk
  by chunk, each written to the client as soon as it arrives. Upstream headers pass through except hop-by-hop
  ones, plus the headers response hooks ask for (e.g. `x-session-token`) and `x-request-id`. An upstream that
  fails mid-stream ends the stream with an SSE error event (other bodies: the connection is closed, so the client
  sees a truncated body, not a complete one). A model server silent for the upstream idle timeout, or a request
  past its total timeout, fails the same way, or with 504 before the status line; failures before the status line
  are retried on the fallbacks first (`upstream`, docs/resilience.md). `handle.on_disconnect()` runs in a
  `finally`, so a request the client left (aiohttp cancels the handler) ends too, as 499.
- `GET /v1/models`: the union of every endpoint's `/v1/models` (`data` merged by `id`, first seen wins), asked
  concurrently with a short timeout; 503 when no endpoint answers.
- `GET /healthz`: the process is alive. `GET /readyz`: a configuration is loaded and at least one endpoint has
  fresh metrics. `GET /metrics`: the router's Prometheus metrics (`observability.page`).

Admin routes (`POST /admin/reload`) are not served here but on their own address (`admin`). A request body must
arrive within the body-read timeout (`connections.ConnectionLimits.body_timeout`), or the answer is 408 and the
connection is closed.

Every error is an OpenAI-style JSON body (`RequestError`), also for unknown routes and unexpected failures.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from kvroute.router.framework import ApiKind, Endpoint
from kvroute.router.observability.page import metrics_page
from kvroute.router.proxy.connections import DEFAULT_BODY_TIMEOUT, GUARD
from kvroute.router.proxy.disaggregation import Opened, open_upstream
from kvroute.router.proxy.sse import error_event
from kvroute.router.proxy.upstream import Unreachable, Upstream, UpstreamSettings, response_headers
from kvroute.router.requestcontrol.body import REQUEST_ID_HEADER, RequestError
from kvroute.router.requestcontrol.director import Director
from kvroute.router.requestcontrol.handle import RequestHandle
from kvroute.router.requestcontrol.response import EVENT_STREAM

log = logging.getLogger(__name__)

MAX_BUFFERED_ANSWER = 1024 * 1024
MODELS_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


def error_response(error: RequestError) -> web.Response:
    return web.Response(
        status=error.status, body=error.json_bytes(), content_type="application/json", headers=error.headers
    )


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


async def _body_timed_out(request: web.Request, seconds: float) -> web.StreamResponse:
    """408 for a client that did not send its body in time, then the connection is closed (aiohttp would go on
    reading the rest of the body)."""
    guard = request.app.get(GUARD)
    if guard is not None:
        guard.closed["body_timeout"] += 1
    response = error_response(RequestError(408, f"the request body did not arrive within {seconds:g}s", "body_timeout"))
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()
    return response


class ProxyHandlers:
    def __init__(self, director: Director, upstream: Upstream, body_timeout: float = DEFAULT_BODY_TIMEOUT) -> None:
        self.director = director
        self.upstream = upstream
        self.body_timeout = body_timeout

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, ApiKind.COMPLETIONS)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, ApiKind.CHAT)

    async def _generate(self, request: web.Request, api: ApiKind) -> web.StreamResponse:
        director = self.director
        try:
            intake = director.open(api, request.content_length)
            try:
                if request.content.is_eof():  # all of it arrived with the headers: nothing to wait for
                    raw = await request.read()
                else:
                    async with asyncio.timeout(self.body_timeout):
                        raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise intake.refuse() from None
            except TimeoutError:
                return await _body_timed_out(request, self.body_timeout)
            started = director.start(api, raw, request.headers.items())
            handle = started if isinstance(started, RequestHandle) else await started
        except RequestError as exc:
            return error_response(exc)
        try:
            return await self._forward(request, handle)
        except Exception:
            handle.complete("internal error", status=500)
            raise  # logged and answered by the `json_errors` middleware
        finally:
            handle.on_disconnect()

    async def _forward(self, request: web.Request, handle: RequestHandle) -> web.StreamResponse:
        try:
            opened = await open_upstream(self.upstream, handle, request.path)
        except Unreachable as exc:
            if exc.timed_out:
                handle.complete(f"upstream timed out: {exc.reason}", status=504)
                return error_response(RequestError(504, "no model server answered in time", "upstream_timeout"))
            handle.complete(f"upstream unreachable: {exc.reason}", status=502)
            return error_response(RequestError(502, "no endpoint could be reached", "upstream_unreachable"))
        except aiohttp.SocketTimeoutError:
            handle.complete("upstream sent nothing within the idle timeout", status=504)
            return error_response(RequestError(504, "the model server did not answer in time", "upstream_timeout"))
        except aiohttp.ClientError as exc:
            handle.complete(f"upstream failed: {exc}", status=502)
            return error_response(RequestError(502, "the model server failed", "upstream_failed"))
        upstream = opened.response
        try:
            handle.on_response_headers(opened.endpoint, upstream.status, upstream.headers)
            headers = response_headers(upstream.headers, handle.response.client_headers)
            if REQUEST_ID_HEADER not in headers:
                headers[REQUEST_ID_HEADER] = handle.request.request_id
            length = upstream.content_length
            is_sse = upstream.content_type == EVENT_STREAM
            if not is_sse and length is not None and length <= MAX_BUFFERED_ANSWER:
                return await self._relay_whole(opened, handle, headers)
            return await self._relay_stream(request, opened, handle, headers, is_sse)
        finally:
            upstream.close()

    @staticmethod
    async def _relay_whole(opened: Opened, handle: RequestHandle, headers: CIMultiDict[str]) -> web.StreamResponse:
        upstream = opened.response
        try:
            body = await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            handle.complete(f"upstream failed: {exc or type(exc).__name__}", status=502)
            return error_response(RequestError(502, "the model server failed while answering", "upstream_failed"))
        handle.on_response_chunk(opened.endpoint, body)
        handle.complete()
        return web.Response(status=upstream.status, body=body, headers=headers)

    @staticmethod
    async def _relay_stream(
        request: web.Request,
        opened: Opened,
        handle: RequestHandle,
        headers: CIMultiDict[str],
        is_sse: bool,
    ) -> web.StreamResponse:
        upstream, endpoint = opened.response, opened.endpoint
        response = web.StreamResponse(status=upstream.status, headers=headers)
        try:
            await response.prepare(request)
            for chunk in opened.head:
                handle.on_response_chunk(endpoint, chunk)
                await response.write(chunk)
            read = upstream.content.readany
            while True:
                try:
                    chunk = await read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    handle.complete(f"upstream failed mid-stream: {exc or type(exc).__name__}", status=502)
                    if is_sse:
                        await response.write(error_event("the model server failed mid-stream", "upstream_failed"))
                        await response.write_eof()
                    elif request.transport is not None:
                        request.transport.close()
                    return response
                if not chunk:
                    break
                handle.on_response_chunk(endpoint, chunk)
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            handle.on_disconnect()
            return response
        handle.complete()
        return response

    async def models(self, request: web.Request) -> web.Response:
        endpoints = self.director.pool.snapshot()
        answers = await asyncio.gather(*(self._models_of(e) for e in endpoints))
        cards: dict[str, Any] = {}
        answered = False
        for answer in answers:
            if answer is None:
                continue
            answered = True
            for card in answer:
                if isinstance(card, dict) and isinstance(card.get("id"), str):
                    cards.setdefault(card["id"], card)
        if not answered:
            return error_response(RequestError(503, "no endpoint answered /v1/models", "no_endpoints"))
        return _json({"object": "list", "data": list(cards.values())})

    async def _models_of(self, endpoint: Endpoint) -> list[Any] | None:
        url = self.upstream.url(endpoint, "/v1/models")
        try:
            async with self.upstream.session.get(url, timeout=MODELS_TIMEOUT) as response:
                if response.status != 200:
                    return None
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        data = body.get("data") if isinstance(body, dict) else None
        return data if isinstance(data, list) else None

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        reason = self.director.not_ready_reason()
        if reason is not None:
            return error_response(RequestError(503, f"not ready: {reason}", "not_ready"))
        endpoints = self.director.pool.snapshot()
        fresh = sum(not e.metrics.stale for e in endpoints)
        return _json({"status": "ready", "endpoints": len(endpoints), "fresh": fresh})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status, "http_error")
        message = f"{exc.reason}: {request.method} {request.rel_url.path[:200]}"
        return error_response(RequestError(exc.status, message, code))
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.rel_url.path[:200])
        return error_response(RequestError(500, "internal error", "internal_error"))


def build_app(
    director: Director,
    session: aiohttp.ClientSession,
    *,
    upstream: UpstreamSettings | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> web.Application:
    """The proxy application; `session` is the one upstream HTTP seam (its owner closes it), `upstream` the
    timeouts and retries of the requests sent through it; `body_timeout` the seconds a client has to send a
    request body. `/metrics` serves the metrics of the Director's ledger (none without)."""
    forward = Upstream(session, upstream)
    handlers = ProxyHandlers(director, forward, body_timeout)
    app = web.Application(client_max_size=director.max_body_bytes, middlewares=[json_errors])

    async def close_upstream(app: web.Application) -> None:
        await forward.close()

    app.on_cleanup.append(close_upstream)
    add = app.router.add_route
    add("POST", "/v1/completions", handlers.completions)
    add("POST", "/v1/chat/completions", handlers.chat_completions)
    add("GET", "/v1/models", handlers.models)
    add("GET", "/healthz", handlers.healthz)
    add("GET", "/readyz", handlers.readyz)
    metrics = director.ledger.metrics
    if metrics is not None:
        add("GET", "/metrics", metrics_page(metrics))
    return app
