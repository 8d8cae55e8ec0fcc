"""The OpenAI-compatible proxy's HTTP application: aiohttp handlers that turn HTTP into Director calls.

Routes:

- `POST /v1/completions`, `POST /v1/chat/completions`: `Director.start`, then the upstream answer (see
  `disaggregation`, `upstream`) relayed to the client. A JSON answer with a `Content-Length` of at most
  `MAX_BUFFERED_ANSWER` is read whole and sent in one write; anything else (SSE, unknown length) is streamed chunk
  by chunk, each written to the client as soon as it arrives. Upstream headers pass through except hop-by-hop
  ones, plus the headers response hooks ask for (e.g. `x-session-token`) and `x-request-id`. An upstream that
  fails mid-stream ends the stream with an SSE error event (other bodies: the connection is closed, so the client
  sees a truncated body, not a complete one). A model server silent for the upstream idle timeout fails the
  request the same way, or with 504 before the status line. `handle.on_disconnect()` runs in a `finally`, so a
  request the client left (aiohttp cancels the handler) ends too, as 499.
- `GET /v1/models`: the union of every endpoint's `/v1/models` (`data` merged by `id`, first seen wins), asked
  concurrently with a short timeout; 503 when no endpoint answers.
- `GET /healthz`: the process is alive. `GET /readyz`: a configuration is loaded and at least one endpoint has
  fresh metrics. `GET /metrics`: the router's Prometheus metrics (`observability.page`).
- `POST /admin/reload`: re-reads the `--config` file through the `ConfigHolder`; 200 with the plugins and
  profiles now serving, or 400 with every `ConfigError` message (the old configuration keeps serving). Like
  every route it is served on the proxy's address, which is why that defaults to 127.0.0.1.

Every error is an OpenAI-style JSON body (`RequestError`), also for unknown routes and unexpected failures.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from kvroute.router.config.errors import ConfigError
from kvroute.router.framework import ApiKind, Endpoint
from kvroute.router.observability.page import metrics_page
from kvroute.router.proxy.disaggregation import Opened, open_upstream
from kvroute.router.proxy.sse import error_event
from kvroute.router.proxy.upstream import Unreachable, Upstream, response_headers
from kvroute.router.requestcontrol.body import REQUEST_ID_HEADER, RequestError
from kvroute.router.requestcontrol.director import Director
from kvroute.router.requestcontrol.handle import RequestHandle
from kvroute.router.requestcontrol.response import EVENT_STREAM

log = logging.getLogger(__name__)

MAX_BUFFERED_ANSWER = 1024 * 1024
MODELS_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


def error_response(error: RequestError) -> web.Response:
    return web.Response(status=error.status, body=error.json_bytes(), content_type="application/json")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


class ProxyHandlers:
    def __init__(self, director: Director, upstream: Upstream, config_path: str | None = None) -> None:
        self.director = director
        self.upstream = upstream
        self.config_path = config_path

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, ApiKind.COMPLETIONS)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, ApiKind.CHAT)

    async def _generate(self, request: web.Request, api: ApiKind) -> web.StreamResponse:
        director = self.director
        try:
            intake = director.open(api, request.content_length)
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise intake.refuse() from None
            started = director.start(api, raw, request.headers.items())
            handle = started if isinstance(started, RequestHandle) else await started
        except RequestError as exc:
            return error_response(exc)
        try:
            return await self._forward(request, handle)
        except Exception:
            handle.complete("internal error", status=500)
            raise  # logged and answered by the `_json_errors` middleware
        finally:
            handle.on_disconnect()

    async def _forward(self, request: web.Request, handle: RequestHandle) -> web.StreamResponse:
        try:
            opened = await open_upstream(self.upstream, handle, request.path)
        except Unreachable as exc:
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

    async def reload(self, request: web.Request) -> web.Response:
        if self.config_path is None:
            return error_response(RequestError(400, "the router was started without --config", "no_config_file"))
        path = Path(self.config_path)
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return error_response(RequestError(400, f"cannot read {path}: {exc}", "config_unreadable"))
        try:
            config = self.director.holder.reload_text(text)
        except ConfigError as exc:
            error = RequestError(
                400, "the configuration was rejected; the previous one keeps serving", "invalid_config"
            )
            body = error.body()
            body["error"]["details"] = list(exc.errors)
            return _json(body, status=400)
        log.info("configuration reloaded from %s", path)
        return _json({"status": "reloaded", "plugins": list(config.plugins), "profiles": list(config.profiles)})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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


def build_app(director: Director, session: aiohttp.ClientSession, *, config_path: str | None = None) -> web.Application:
    """The proxy application; `session` is the one upstream HTTP seam (its owner closes it). `/metrics` serves the
    metrics of the Director's ledger (none without)."""
    handlers = ProxyHandlers(director, Upstream(session), config_path)
    app = web.Application(client_max_size=director.max_body_bytes, middlewares=[_json_errors])
    add = app.router.add_route
    add("POST", "/v1/completions", handlers.completions)
    add("POST", "/v1/chat/completions", handlers.chat_completions)
    add("GET", "/v1/models", handlers.models)
    add("GET", "/healthz", handlers.healthz)
    add("GET", "/readyz", handlers.readyz)
    metrics = director.ledger.metrics
    if metrics is not None:
        add("GET", "/metrics", metrics_page(metrics))
    add("POST", "/admin/reload", handlers.reload)
    return app
