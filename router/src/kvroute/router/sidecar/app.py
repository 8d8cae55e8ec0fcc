"""The sidecar in front of a decode engine: llm-d's P/D protocol on the header `x-prefiller-host-port`.

The Endpoint Picker sends a disaggregated request to the decode pod with `x-prefiller-host-port: <ip>:<port>` of
the prefill engine (several, comma-separated: the first). For `POST /v1/completions` and
`POST /v1/chat/completions` carrying it, the sidecar

1. sends the prefill request (`requestcontrol.prefill`: the body with `kv_transfer_params.do_remote_decode`,
   `max_tokens: 1`, not streamed) to `http://<ip>:<port><path>`, bounded by `prefill_timeout`;
2. sends the decode request (the body with the `kv_transfer_params` the prefill answered) to the local decode
   engine, and relays its answer, streamed chunk by chunk.

Both carry the same `x-request-id` (the client's, else a new one). Without the header, and for every other route
(`/v1/models`, `/health`, `/metrics`, ...), the request passes through to the decode engine unchanged; the header
itself is never forwarded. Errors are OpenAI-style JSON bodies: a prefill engine that cannot be reached, times
out, fails (5xx) or answers without `kv_transfer_params` gives 502 naming it and the reason; a prefill engine's
4xx (e.g. the prompt is too long) is relayed as it is, since the decode would fail the same way; an unreachable
decode engine gives 503; a body over `max_body_bytes` 413; a P/D body that is not a JSON object, or a malformed
header, 400. Connecting is bounded by `connect_timeout`, and an engine silent for `idle_timeout` ends the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from kvroute.router.proxy.upstream import create_session, request_headers, response_headers
from kvroute.router.requestcontrol import prefill
from kvroute.router.requestcontrol.body import REQUEST_ID_HEADER, RequestError, bad_request, too_large
from kvroute.router.requestcontrol.director import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger(__name__)

PD_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
DEFAULT_PREFILL_TIMEOUT = 120.0
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


@dataclass(frozen=True)
class SidecarSettings:
    decoder_url: URL
    prefill_timeout: float = DEFAULT_PREFILL_TIMEOUT
    connect_timeout: float = 3.0
    idle_timeout: float = 300.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def error_response(error: RequestError) -> web.Response:
    return web.Response(status=error.status, body=error.json_bytes(), content_type="application/json")


def prefill_target(value: str) -> str:
    """The `ip:port` to prefill on, from the header's value (the first of a comma-separated list)."""
    first = next((part.strip() for part in value.split(",") if part.strip()), "")
    try:
        url = URL(f"http://{first}")
    except ValueError:
        url = None
    if url is None or not url.host or url.explicit_port is None or url.raw_path not in ("", "/") or url.query_string:
        raise bad_request(f"{prefill.PREFILLER_HEADER} must be host:port, not {value!r}", "invalid_prefiller")
    return first


class Sidecar:
    def __init__(self, settings: SidecarSettings) -> None:
        self.settings = settings
        self._prefill_timeout = aiohttp.ClientTimeout(
            total=settings.prefill_timeout, sock_connect=settings.connect_timeout
        )

    def app(self, session: aiohttp.ClientSession | None = None) -> web.Application:
        """The aiohttp application; `session` replaces the one it would create (and then is not closed by it)."""
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)

        async def session_context(app: web.Application) -> Any:
            if session is not None:
                app[SESSION] = session
                yield
                return
            app[SESSION] = create_session(self.settings.connect_timeout, self.settings.idle_timeout)
            yield
            await app[SESSION].close()

        app.cleanup_ctx.append(session_context)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_response(too_large(self.settings.max_body_bytes))
        headers = request_headers({name.lower(): value for name, value in request.headers.items()})
        target = headers.pop(prefill.PREFILLER_HEADER, None)
        session = request.app[SESSION]
        if target is None or request.method != "POST" or request.path not in PD_PATHS:
            return await self._decode(request, session, raw, headers)
        try:
            return await self._disaggregated(request, session, raw, headers, prefill_target(target))
        except RequestError as error:
            return error_response(error)

    async def _disaggregated(
        self, request: web.Request, session: aiohttp.ClientSession, raw: bytes, headers: dict[str, str], target: str
    ) -> web.StreamResponse:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object", "invalid_json")
        headers.setdefault(REQUEST_ID_HEADER, str(uuid.uuid4()))
        url = URL(f"http://{target}").with_path(request.path)
        try:
            params = await prefill.prefill(session, url, body, headers, timeout=self._prefill_timeout)
        except prefill.PrefillFailed as failed:
            log.warning("prefill of request %s on %s: %s", headers[REQUEST_ID_HEADER], target, failed.reason)
            if failed.status is not None and 400 <= failed.status < 500 and failed.body:
                return web.Response(status=failed.status, body=failed.body, content_type="application/json")
            raise RequestError(502, f"prefill on {target} failed: {failed.reason}", "prefill_failed") from None
        decode = prefill.decode_body(body, params, reset_threshold="cache_hit_threshold" in body)
        return await self._decode(request, session, prefill.dumps(decode), headers)

    async def _decode(
        self, request: web.Request, session: aiohttp.ClientSession, body: bytes, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        """Sends the request to the decode engine and relays its answer as it comes."""
        url = self.settings.decoder_url.join(request.rel_url)
        try:
            upstream = await session.request(
                request.method, url, data=body or None, headers=headers, skip_auto_headers=("Accept-Encoding",)
            )
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            error = RequestError(503, f"the decode engine is not reachable: {reason}", "decoder_unreachable")
            return error_response(error)
        async with upstream:
            response = web.StreamResponse(status=upstream.status, headers=response_headers(upstream.headers, {}))
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The status line is gone: all the client can learn is that the answer stopped.
                log.warning("decode answer to %s broke off: %s", request.path, exc or type(exc).__name__)
                return response
            await response.write_eof()
            return response


async def serve(sidecar: Sidecar, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM; a client that goes away cancels its request (and the engines' with it)."""
    runner = web.AppRunner(sidecar.app(), handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("sidecar on http://%s:%d for the decode engine at %s", host, port, sidecar.settings.decoder_url)
        await stop.wait()
    finally:
        await runner.cleanup()
