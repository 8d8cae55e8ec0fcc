"""The proxy's HTTP/1.1 client to the model servers: keep-alive connections on `asyncio.Protocol`, parsed with
`httptools` (llhttp, the parser of Node.js).

It does what forwarding a request needs and nothing else, at a fraction of a general client's cost per request
(`kvroute bench overhead --parts stacks`: ~16 µs of CPU against ~175 µs for aiohttp's client on one machine):

- `UpstreamClient.post` writes one POST (the headers given, `Host` and `Content-Length`) on a pooled connection
  to `host:port`, or a new one, and returns once the status line and headers arrived: an `UpstreamResponse`
  whose body is read whole (`read`) or as it comes (`content.readany`);
- a connection goes back to the pool when its response was read to the end and the server keeps it alive;
  connections idle for `keepalive_timeout` seconds are closed (below uvicorn's 5 s, so the client closes first);
  TCP_NODELAY is set on every connection, so a small SSE chunk is never held back;
- a body that arrives faster than the caller reads it pauses the socket beyond `BUFFER_LIMIT` bytes.

Failures are raised as aiohttp's exceptions, as the proxy's retry rule expects them (`upstream`): refused or
unreachable: `aiohttp.ClientConnectionError`; connecting longer than `connect_timeout`:
`aiohttp.ConnectionTimeoutError`; a connection closed before the status line: `aiohttp.ServerDisconnectedError`;
no byte for `idle_timeout` seconds once the request is sent (status line or body): `aiohttp.SocketTimeoutError`;
the request's `deadline` passed: `TimeoutError`; a body cut short or malformed: `aiohttp.ClientPayloadError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Mapping

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

BUFFER_LIMIT = 256 * 1024  # body bytes buffered before the socket pauses
DEFAULT_MIME = "application/octet-stream"
_NO_BODY_STATUSES = frozenset({204, 304})


class _Connection(asyncio.Protocol):
    """One keep-alive connection; serves one request at a time."""

    def __init__(self, pool: deque[_Connection], loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._response: UpstreamResponse | None = None
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._received = False  # a byte of the current response arrived

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._received = True
        response = self._response
        if response is not None:
            response._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(aiohttp.ClientPayloadError("the model server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(aiohttp.ClientPayloadError(f"malformed answer from the model server: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self._response
        if self._head is not None and not self._head.done():
            self._head.set_exception(aiohttp.ServerDisconnectedError())
        elif response is not None and not response._complete:
            if response._until_close:
                response._finish()
            else:
                response._error(aiohttp.ClientPayloadError("the model server closed the connection mid-answer"))

    def pause_writing(self) -> None:  # a request body larger than the socket buffer: nothing to pause
        pass

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.add(name.decode("latin-1"), value.decode("utf-8", "replace"))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:  # 100 Continue and other interim answers: the real one follows
            self._headers = CIMultiDict()
            return
        headers = CIMultiDictProxy(self._headers)
        self._headers = CIMultiDict()
        response = self._response = UpstreamResponse(self, status, headers)
        response._last_data = self._loop.time()
        length = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        response._until_close = length is None and not chunked and status not in _NO_BODY_STATUSES
        response._keep_alive = parser.should_keep_alive()
        if self._head is not None and not self._head.done():
            self._head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._response is not None:
            self._response._finish()

    # for UpstreamClient and UpstreamResponse

    def send(self, data: bytes) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self._response = None
        self._received = False
        self._head = self._loop.create_future()
        self.transport.write(data)
        return self._head

    def done(self, response: UpstreamResponse) -> None:
        """The response was read to its end (or dropped): keep the connection or close it."""
        if self._response is response:
            self._response = None
        self._head = None
        if response._complete and response._keep_alive and not self.closed and not response._failed:
            self.idle_since = self._loop.time()
            self._pool.append(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _fail(self, error: Exception) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        elif self._response is not None:
            self._response._error(error)
        self.close()


class UpstreamResponse:
    """A model server's answer: status and headers arrived; the body is read with `read` or `content.readany`.
    `release`/`close` end it: the connection goes back to the pool if the body was read to the end."""

    def __init__(self, connection: _Connection, status: int, headers: CIMultiDictProxy[str]) -> None:
        self.status = status
        self.headers = headers
        self.content = self  # `content.readany()`, as aiohttp's responses read a stream
        self._connection: _Connection | None = connection
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._complete = False
        self._failed: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._until_close = False
        self._keep_alive = True
        self._last_data = 0.0
        self._idle_timeout: float | None = None
        self._deadline: float | None = None  # loop time
        self._timer: asyncio.TimerHandle | None = None
        self._body: bytes | None = None  # what `read` returned

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def content_type(self) -> str:
        value = self.headers.get("content-type")
        if not value:
            return DEFAULT_MIME
        return value.partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        """The whole body (the same bytes again when called again, as aiohttp's responses do)."""
        if self._body is None:
            parts: list[bytes] = []
            while chunk := await self.readany():
                parts.append(chunk)
            self._body = b"".join(parts)
        return self._body

    async def readany(self) -> bytes:
        """The body bytes that arrived since the last call, waiting for some; b"" at the end of the body."""
        while not self._chunks:
            if self._failed is not None:
                raise self._failed
            if self._complete:
                self.release()
                return b""
            await self._wait()
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self._connection is not None:
            self._paused = False
            self._connection.resume()
        return data

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.done(self)

    close = release

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        limit = self._limit()
        if limit is not None:
            self._timer = loop.call_at(limit, self._expire)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _limit(self) -> float | None:
        idle = None if self._idle_timeout is None else self._last_data + self._idle_timeout
        return _earliest(idle, self._deadline)

    def _expire(self) -> None:
        """The wait's time is up, unless data came meanwhile (then it waits for the rest of the idle time)."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._deadline is not None and now >= self._deadline:
            self._error(TimeoutError("the request's total timeout passed"))
        elif self._idle_timeout is not None and now >= self._last_data + self._idle_timeout:
            self._error(aiohttp.SocketTimeoutError(f"no data from the model server for {self._idle_timeout:g}s"))
        else:
            limit = self._limit()
            if limit is not None:
                self._timer = loop.call_at(limit, self._expire)
            return
        if self._connection is not None:
            self._connection.close()

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > BUFFER_LIMIT and not self._paused and self._connection is not None:
            self._paused = True
            self._connection.pause()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _error(self, error: Exception) -> None:
        if self._failed is None and not self._complete:
            self._failed = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class UpstreamClient:
    """Keep-alive connections to the model servers, one pool per `host:port`."""

    def __init__(self, connect_timeout: float | None = None, keepalive_timeout: float = 4.0) -> None:
        self.connect_timeout = connect_timeout or None
        self.keepalive_timeout = keepalive_timeout
        self._pools: dict[tuple[str, int], deque[_Connection]] = {}
        self._closed = False

    async def post(
        self,
        host: str,
        port: int,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        idle_timeout: float | None = None,
        deadline: float | None = None,
    ) -> UpstreamResponse:
        """Sends the request and waits for the status line and headers (see the module's docstring for the
        failures). `deadline` is a `time.perf_counter()` reading."""
        if self._closed:
            raise aiohttp.ClientConnectionError("the upstream client is closed")
        loop = asyncio.get_running_loop()
        limit = None if deadline is None else loop.time() + (deadline - time.perf_counter())
        connection = await self._connection(loop, host, port, limit)
        data = _request(host, port, path, body, headers)
        head = connection.send(data)
        timer = None
        wait = _earliest(None if idle_timeout is None else loop.time() + idle_timeout, limit)
        if wait is not None:
            timer = loop.call_at(wait, _expire_head, head, limit, idle_timeout)
        try:
            response = await head
        except BaseException:
            connection.close()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        response._idle_timeout = idle_timeout
        response._deadline = limit
        return response

    async def _connection(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int, limit: float | None
    ) -> _Connection:
        key = (host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = deque()
        now = loop.time()
        while pool:
            connection = pool.pop()
            if connection.closed or now - connection.idle_since > self.keepalive_timeout:
                connection.close()
                continue
            return connection
        timeout = self.connect_timeout
        if limit is not None:
            left = limit - now
            if left <= 0:
                raise TimeoutError("the request's total timeout passed")
            timeout = left if timeout is None else min(timeout, left)
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(lambda: _Connection(pool, loop), host, port)
        except TimeoutError:
            if limit is not None and loop.time() >= limit:
                raise TimeoutError("the request's total timeout passed") from None
            raise aiohttp.ConnectionTimeoutError(f"connecting to {host}:{port} took over {timeout:g}s") from None
        except OSError as exc:
            raise aiohttp.ClientConnectionError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        return connection

    async def close(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            while pool:
                pool.pop().close()
        self._pools.clear()


def _earliest(first: float | None, second: float | None) -> float | None:
    if first is None:
        return second
    return first if second is None else min(first, second)


def _expire_head(head: asyncio.Future[UpstreamResponse], limit: float | None, idle_timeout: float | None) -> None:
    if head.done():
        return
    if limit is not None and asyncio.get_running_loop().time() >= limit:
        head.set_exception(TimeoutError("the request's total timeout passed"))
    else:
        head.set_exception(aiohttp.SocketTimeoutError(f"no answer from the model server for {idle_timeout:g}s"))


def _request(host: str, port: int, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {len(body)}\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            continue  # never split the request: a header that would is dropped
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape") + body
