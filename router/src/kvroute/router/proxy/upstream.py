"""The proxy's one seam to the model servers: a shared `aiohttp.ClientSession` and the attempt/fallback rule.

The session keeps connections alive (`keepalive_timeout` below the 5 s idle timeout of uvicorn, which vLLM
serves with, so the router closes an idle connection before the server does), has no connection cap (`limit=0`)
and no total timeout (a generation may take minutes). Connecting is bounded, and so is silence: once the request
is sent, an upstream that sends no byte for `idle_timeout` seconds (the status line, or the next body chunk) fails
the request with `aiohttp.SocketTimeoutError`, so a hung model server cannot hold a request forever. A
non-streamed answer only starts when the whole generation is done, so the bound must exceed the longest one.
aiohttp sets TCP_NODELAY on every connection, so a small SSE chunk is never held back by Nagle's algorithm. Bodies
pass through undecoded (`auto_decompress=False`), and the client's `Accept-Encoding` is not forwarded, so the
usage the Director reads arrives uncompressed.

Retry rule: only a failure before any response byte moves on to the next endpoint (connection refused, reset or
closed before the status line, connect timeout). A connection closed before the status line is first retried once
on the same endpoint: a pooled keep-alive connection the server had just closed looks exactly like that. Once the
status line arrived the request is never sent again, nor after the idle timeout: the endpoint has the request and
may still be working on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from kvroute.router.framework import Endpoint
from kvroute.router.requestcontrol.handle import RequestHandle

# RFC 9110 §7.6.1 connection-specific fields, plus what the proxy sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# aiohttp has already decoded a compressed request body, so `Content-Encoding` no longer applies to it.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "content-encoding", "accept-encoding", "expect"}
_NOT_RETURNED = HOP_BY_HOP | {"content-length"}

# aiohttp would otherwise ask for gzip itself.
_NO_AUTO_HEADERS = ("Accept-Encoding",)

DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_IDLE_TIMEOUT = 300.0
KEEPALIVE_TIMEOUT = 4.0


def create_session(
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, idle_timeout: float = DEFAULT_IDLE_TIMEOUT
) -> aiohttp.ClientSession:
    """`idle_timeout` 0 means no bound on the upstream's silence."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_TIMEOUT)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=idle_timeout or None)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)


class Unreachable(Exception):
    """No endpoint could be reached; `reason` is the last failure."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _connection_names(value: str | None) -> set[str]:
    return {name.strip().lower() for name in value.split(",")} if value else set()


def request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """What is forwarded of lower-cased request headers: all but hop-by-hop ones (and those `Connection` names),
    `Host`, `Content-Length`, `Content-Encoding`, `Accept-Encoding` and `Expect`."""
    extra = _connection_names(headers.get("connection"))
    return {k: v for k, v in headers.items() if k not in _NOT_FORWARDED and k not in extra}


def response_headers(upstream: CIMultiDictProxy[str], added: Mapping[str, str]) -> CIMultiDict[str]:
    """What the client gets of the upstream's response headers (all but hop-by-hop ones and `Content-Length`),
    plus `added` (replacing headers of the same name)."""
    extra = _connection_names(upstream.get("connection"))
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lowered = name.lower()
        if lowered not in _NOT_RETURNED and lowered not in extra:
            headers.add(name, value)
    for name, value in added.items():
        headers[name] = value
    return headers


class Upstream:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._urls: dict[tuple[str, str], URL] = {}

    def url(self, endpoint: Endpoint, path: str) -> URL:
        """The endpoint's URL for `path` (a route of the proxy, so the cache stays small)."""
        key = (endpoint.id, path)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) > 4096:
                self._urls.clear()
            host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
            url = self._urls[key] = URL(f"http://{host}:{endpoint.port}{path}")
        return url

    async def post(
        self, endpoint: Endpoint, path: str, body: bytes, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        """One attempt; the status line and headers have arrived when it returns. Raises
        `aiohttp.ClientConnectionError` (or `TimeoutError`) when nothing came back, `aiohttp.SocketTimeoutError`
        when the endpoint took the request and then stayed silent for the idle timeout."""
        return await self.session.post(
            self.url(endpoint, path), data=body, headers=headers, skip_auto_headers=_NO_AUTO_HEADERS
        )

    async def open(
        self,
        handle: RequestHandle,
        endpoints: Sequence[Endpoint],
        path: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> tuple[Endpoint, aiohttp.ClientResponse]:
        """Sends to the first endpoint that answers, in order, telling the handle about every attempt."""
        reason = "no endpoint to try"
        for endpoint in endpoints:
            handle.on_forward(endpoint)
            for attempt in range(2):
                try:
                    return endpoint, await self.post(endpoint, path, body, headers)
                except aiohttp.SocketTimeoutError:
                    raise
                except aiohttp.ServerDisconnectedError as exc:
                    reason = f"{endpoint.id}: {exc.message or 'server disconnected'}"
                    if attempt == 0:
                        continue
                except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                    reason = f"{endpoint.id}: {exc or type(exc).__name__}"
                handle.on_unreachable(endpoint, reason)
                break
        raise Unreachable(reason)
