"""The proxy's seam to the model servers: the forwarding client, a shared `aiohttp.ClientSession`, and the
attempt/retry rule.

Requests are forwarded with `client.UpstreamClient` (keep-alive connections, `KEEPALIVE_TIMEOUT` below the 5 s
idle timeout of uvicorn, which vLLM serves with, so the router closes an idle connection before the server does;
no connection cap; TCP_NODELAY, so a small SSE chunk is never held back by Nagle's algorithm). The session serves
the rest (`/v1/models`, a P/D prefill). Bodies pass through undecoded, and the client's `Accept-Encoding` is not
forwarded, so the usage the Director reads arrives uncompressed.

Timeouts (`UpstreamSettings`, docs/resilience.md): connecting is bounded (`connect_timeout`); a streamed request
must get its status line within `first_byte_timeout` (model servers send it at once, before the generation);
once the request is sent, an upstream silent for `idle_timeout` (a non-streamed request's status line, which
only comes after the whole generation, or the next body chunk) fails it with `aiohttp.SocketTimeoutError`; and
the whole request, retries and relay included, is bounded by `total_timeout` from its first attempt.

Retry rule: a request moves on to the next endpoint of its scheduling result (the picker's fallbacks, in order)
only before any response byte reached the client: after a connection failure (refused, reset or closed before
the status line, connect timeout), after no status line within the first-byte timeout, or after an answer with
one of `RetryPolicy.statuses` (whose body is dropped). Each retry waits an exponential backoff with jitter
first; at most `max_retries` retries, and never beyond the last fallback: the last endpoint's answer, whatever
its status, goes to the client. A connection closed before the status line is first retried once at once on the
same endpoint: a pooled keep-alive connection the server had just closed looks exactly like that. A non-streamed
request silent for the idle timeout is not sent again: the endpoint may still be generating its answer. Every
outcome is reported to the request's handle, which feeds the endpoints' circuit breakers.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from kvroute.router.framework import Endpoint
from kvroute.router.proxy.client import UpstreamClient, UpstreamResponse
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

DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_FIRST_BYTE_TIMEOUT = 30.0
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_TOTAL_TIMEOUT = 1800.0
DEFAULT_RETRY_STATUSES = frozenset({429, 502, 503, 504})
KEEPALIVE_TIMEOUT = 4.0


@dataclass(frozen=True)
class RetryPolicy:
    """Retries onto the fallbacks: the n-th retry (from 0) waits `min(initial_backoff * multiplier**n,
    max_backoff)`, scaled by a factor drawn uniformly from `[1 - jitter, 1 + jitter]`."""

    max_retries: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    statuses: frozenset[int] = DEFAULT_RETRY_STATUSES

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("retries, backoffs cannot be negative and the multiplier is at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("the retry jitter is a fraction (0..1)")

    def backoff(self, retry: int, rng: random.Random) -> float:
        base = min(self.initial_backoff * self.multiplier**retry, self.max_backoff)
        return base * (1 + self.jitter * (2 * rng.random() - 1))


@dataclass(frozen=True)
class UpstreamSettings:
    """Seconds; 0 turns a timeout off."""

    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    first_byte_timeout: float = DEFAULT_FIRST_BYTE_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def create_session(
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, idle_timeout: float = DEFAULT_IDLE_TIMEOUT
) -> aiohttp.ClientSession:
    """`idle_timeout` 0 means no bound on the upstream's silence. Cookies a model server sets are relayed to the
    client, never kept: they belong to that client, not to the requests of others."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_TIMEOUT)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout or None, sock_read=idle_timeout or None)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    )


class Unreachable(Exception):
    """No endpoint could be reached, or none answered in time (`timed_out`); `reason` is the last failure."""

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


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
    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: UpstreamSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Owns a forwarding client (`close` closes it); `session` stays its owner's."""
        self.session = session
        self.settings = settings = settings or UpstreamSettings()
        self.client = UpstreamClient(settings.connect_timeout, KEEPALIVE_TIMEOUT)
        self._rng = rng or random.Random()
        self._urls: dict[tuple[str, str], URL] = {}

    async def close(self) -> None:
        await self.client.close()

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
        self,
        endpoint: Endpoint,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        deadline: float | None = None,
        first_byte: bool = False,
    ) -> UpstreamResponse:
        """One attempt; the status line and headers have arrived when it returns. Raises
        `aiohttp.ClientConnectionError` (or `TimeoutError`) when nothing came back, `aiohttp.SocketTimeoutError`
        when the endpoint took the request and then stayed silent for the idle timeout, `TimeoutError` when
        `first_byte` is set and the status line took longer than the first-byte timeout, or the request passed its
        `deadline` (a `time.perf_counter()`); the deadline also bounds reading the response."""
        settings = self.settings
        send = self.client.post(
            endpoint.address,
            endpoint.port,
            path,
            body,
            headers,
            idle_timeout=settings.idle_timeout or None,
            deadline=deadline,
        )
        if first_byte and settings.first_byte_timeout:
            async with asyncio.timeout(settings.first_byte_timeout):
                return await send
        return await send

    async def open(
        self,
        handle: RequestHandle,
        endpoints: Sequence[Endpoint],
        path: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> tuple[Endpoint, UpstreamResponse]:
        """Sends to the endpoints in order until one answers as the retry rule accepts, telling the handle about
        every attempt; raises `Unreachable` when none did. The total timeout counts from the request's start."""
        policy, total = self.settings.retry, self.settings.total_timeout
        deadline = handle.started + total if total else None
        stream = handle.request.stream
        tries = endpoints[: policy.max_retries + 1]
        reason, timed_out = "no endpoint to try", False
        for index, endpoint in enumerate(tries):
            if index > 0:
                await asyncio.sleep(policy.backoff(index - 1, self._rng))
            if deadline is not None and time.perf_counter() >= deadline:
                raise Unreachable("the request's total timeout passed", timed_out=True)
            handle.on_forward(endpoint)
            for attempt in range(2):
                try:
                    response = await self.post(endpoint, path, body, headers, deadline=deadline, first_byte=stream)
                except aiohttp.SocketTimeoutError:
                    handle.on_attempt_failed(endpoint, "idle_timeout")
                    raise
                except aiohttp.ServerDisconnectedError as exc:
                    reason = f"{endpoint.id}: {exc.message or 'server disconnected'}"
                    if attempt == 0:
                        continue
                    handle.on_unreachable(endpoint, reason)
                except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                    if deadline is not None and time.perf_counter() >= deadline:
                        handle.on_attempt_failed(endpoint, "total_timeout")
                        raise Unreachable("the request's total timeout passed", timed_out=True) from None
                    timed_out = isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ConnectionTimeoutError)
                    if timed_out:
                        reason = f"{endpoint.id}: no first byte within {self.settings.first_byte_timeout:g}s"
                        handle.on_attempt_failed(endpoint, "first_byte_timeout")
                    else:
                        reason = f"{endpoint.id}: {exc or type(exc).__name__}"
                        handle.on_unreachable(endpoint, reason)
                else:
                    status = response.status
                    if status not in policy.statuses or index == len(tries) - 1:
                        return endpoint, response
                    response.release()
                    timed_out = False
                    reason = f"{endpoint.id}: status {status}"
                    handle.on_attempt_failed(endpoint, f"status_{status}")
                break
        raise Unreachable(reason, timed_out=timed_out)
