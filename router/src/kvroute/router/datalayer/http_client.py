"""A minimal HTTP/1.1 client for the metrics scraper: GETs of one URL over one kept-alive connection.

A general client costs the router about 1 ms of CPU per scrape (request objects, header multidicts, cookie
handling, a stream reader per response); at 20 scrapes per second per endpoint a core is busy at 50 endpoints. A
scrape needs little of HTTP: one fixed request, and a 200 with a body. `HttpGetter` writes a request prebuilt as
bytes on a persistent connection and parses the answer in the `asyncio.Protocol` callback that receives it, which
hands the outcome straight to the caller's callback (`start_get`): no task, future or timeout context per GET, only
a timer, or none when the caller bounds its GETs itself (`get` is the awaitable form, for callers that would
rather await). Per GET that is one write and, usually, one read: an answer that arrives whole is taken from the
bytes the read returned, and a head byte-identical to the connection's previous one (a server sends the same
headers while the body keeps its length) is not parsed again. What is read of an answer:

- the status line: any status but 200 fails the GET (redirects are not followed: a model server must not point
  the router at other hosts);
- of the headers only `Content-Length`, `Transfer-Encoding` (`chunked` or nothing), `Content-Encoding`
  (`identity` or nothing: no compression is asked for) and `Connection` (`close`, or HTTP/1.0 without
  `keep-alive`, ends the connection after the response);
- the body: `Content-Length` bytes, or chunked (extensions and trailers skipped), or, with neither, everything
  until the server closes the connection.

Bounds: a body over `max_body_bytes` and a head (status line, headers, a chunk-size line, trailers) over
`MAX_HEAD_BYTES` fail the GET; the `timeout` of a GET covers connecting, sending and the whole response. Any
failure closes the connection, so a late or partial answer is never read as the next one; the next `get`
connects again. A kept-alive connection closed by the server while idle is noticed (`connection_lost`) and
replaced; one it closes just as a request goes out, before answering anything, is retried once on a new one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import cast

MAX_HEAD_BYTES = 64 * 1024

_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_IDENTITY = (b"", b"identity")

# What the connection expects next.
_HEAD, _LENGTH, _CHUNK_LINE, _CHUNK_DATA, _TRAILER, _UNTIL_CLOSE, _DONE = range(7)


class HttpError(Exception):
    """The answer cannot be used (a status other than 200, a malformed or oversized response); says why."""


class _ClosedUnanswered(ConnectionResetError):
    """The server closed the connection without sending a byte of the response."""


Outcome = bytes | BaseException
"""What a GET ends with: the body of a 200 answer, or why there is none."""


class _Connection(asyncio.Protocol):
    """One TCP connection; `exchange` sends a request and calls back once with its outcome."""

    def __init__(self, max_body_bytes: int) -> None:
        self._max_body = max_body_bytes
        self._transport: asyncio.Transport | None = None
        self._waiter: Callable[[Outcome], None] | None = None
        self._buffer = bytearray()
        self._body = bytearray()
        self._state = _DONE
        self._remaining = 0  # body or chunk bytes still expected
        self._keep_alive = True
        self._head = b""  # the last head read well, and what it set: a server sends the same head again and again
        self._framing = (_DONE, 0, True)
        self.answered = False  # a byte of the current response arrived
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def exchange(self, request: bytes, done: Callable[[Outcome], None]) -> None:
        assert self._transport is not None and self._state == _DONE, "one request at a time"
        self._waiter = done
        self._state, self._keep_alive, self.answered = _HEAD, True, False
        self._transport.write(request)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # unsolicited bytes: the connection is out of step with its requests
            return
        self.answered = True
        try:
            if self._state == _HEAD and not self._buffer:
                # Usually the whole answer arrives in one read: then it is taken from `data` without a copy to the
                # buffer and back.
                end = data.find(b"\r\n\r\n")
                if end != -1:
                    self._parse_head(data[:end])
                    if self._state == _LENGTH and len(data) - end - 4 == self._remaining:
                        self._complete(data[end + 4 :])
                        return
                    data = data[end + 4 :]
            self._buffer += data
            done = self._advance()
        except HttpError as exc:
            self._finish(exc)
            return
        if done:
            self._complete(bytes(self._body))

    def _complete(self, body: bytes) -> None:
        # Bytes beyond the response would be read as the next one's beginning: such a connection is dropped.
        if self._buffer or not self._keep_alive:
            self.close()
        self._finish(body)

    def eof_received(self) -> bool:
        if self._state == _UNTIL_CLOSE:
            self._finish(bytes(self._body))
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self._waiter is not None:
            if self._state == _UNTIL_CLOSE and exc is None:
                self._finish(bytes(self._body))
            elif not self.answered:
                self._finish(_ClosedUnanswered("connection closed before the response"))
            else:
                self._finish(ConnectionResetError(f"connection closed mid-response: {exc or 'end of stream'}"))

    def _finish(self, outcome: Outcome) -> None:
        waiter, self._waiter = self._waiter, None
        self._state = _DONE
        self._buffer.clear()
        if waiter is None:
            return
        if isinstance(outcome, BaseException):
            self.close()
        waiter(outcome)

    def abandon(self) -> None:
        """Forget the request in flight (its caller gave up) and drop the connection: no callback follows."""
        self._waiter = None
        self.close()

    def _advance(self) -> bool:
        """Consumes what the buffer holds of the response; True once it is complete. Raises `HttpError`."""
        buffer = self._buffer
        while True:
            state = self._state
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end == -1:
                    return self._head_pending(len(buffer))
                self._parse_head(bytes(buffer[:end]))
                del buffer[: end + 4]
            elif state == _LENGTH:
                if len(buffer) < self._remaining:
                    return False
                self._body = buffer[: self._remaining]
                del buffer[: self._remaining]
                return True
            elif state == _CHUNK_LINE:
                end = buffer.find(b"\r\n")
                if end == -1:
                    return self._head_pending(len(buffer))
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                match = _CHUNK_SIZE.match(line)
                if match is None or line[match.end() :].lstrip(b" \t")[:1] not in (b"", b";"):
                    raise HttpError("malformed chunk size line")
                size = int(match.group(), 16)
                if not size:
                    self._state = _TRAILER
                elif len(self._body) + size > self._max_body:
                    raise HttpError(f"body larger than {self._max_body} bytes")
                else:
                    self._state, self._remaining = _CHUNK_DATA, size
            elif state == _CHUNK_DATA:
                size = self._remaining
                if len(buffer) < size + 2:
                    return False
                if buffer[size : size + 2] != b"\r\n":
                    raise HttpError("chunk not followed by CRLF")
                self._body += buffer[:size]
                del buffer[: size + 2]
                self._state = _CHUNK_LINE
            elif state == _TRAILER:
                end = buffer.find(b"\r\n")
                if end == -1:
                    return self._head_pending(len(buffer))
                del buffer[: end + 2]
                if not end:
                    return True
            else:  # _UNTIL_CLOSE
                if len(self._body) + len(buffer) > self._max_body:
                    raise HttpError(f"body larger than {self._max_body} bytes")
                self._body += buffer
                buffer.clear()
                return False

    @staticmethod
    def _head_pending(buffered: int) -> bool:
        if buffered > MAX_HEAD_BYTES:
            raise HttpError(f"response head larger than {MAX_HEAD_BYTES} bytes")
        return False

    def _parse_head(self, head: bytes) -> None:
        if head == self._head:
            self._state, self._remaining, self._keep_alive = self._framing
        else:
            self._read_head(head)
            self._head, self._framing = head, (self._state, self._remaining, self._keep_alive)
        if self._state != _LENGTH:
            self._body = bytearray()  # filled piece by piece

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        status = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not status.isdigit() or rest[3:4] not in (b"", b" "):
            raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        if status != b"200":
            raise HttpError(f"HTTP {int(status)}")
        length: int | None = None
        chunked = False
        connection = b""
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or b" " in name or b"\t" in name:
                raise HttpError(f"malformed header line: {line[:80]!r}")
            name = name.lower()
            value = value.strip(b" \t")
            if name == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise HttpError(f"bad Content-Length: {value[:40]!r}")
                length = int(value)
            elif name == b"transfer-encoding":
                coding = value.lower()
                if coding == b"chunked":
                    chunked = True
                elif coding not in _IDENTITY:
                    raise HttpError(f"unsupported transfer coding: {value[:40]!r}")
            elif name == b"content-encoding":
                if value.lower() not in _IDENTITY:
                    raise HttpError(f"compressed body ({value[:40]!r}) was not asked for")
            elif name == b"connection":
                connection += b"," + value.lower()
        tokens = {token.strip() for token in connection.split(b",")}
        self._keep_alive = b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)
        if chunked:
            # With both framings the length is not to be trusted, nor what follows on the connection.
            self._keep_alive = self._keep_alive and length is None
            self._state = _CHUNK_LINE
        elif length is not None:
            if length > self._max_body:
                raise HttpError(f"body larger than {self._max_body} bytes")
            self._state, self._remaining = _LENGTH, length
        else:
            self._keep_alive = False
            self._state = _UNTIL_CLOSE


class HttpGetter:
    """GETs `http://host:port/path` over one kept-alive connection, one at a time (see the module docstring)."""

    def __init__(self, host: str, port: int, path: str, *, max_body_bytes: int) -> None:
        self._host = host
        self._port = port
        self._max_body = max_body_bytes
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: kvroute\r\n"
            "Accept: text/plain\r\nAccept-Encoding: identity\r\n\r\n"
        ).encode("ascii")
        self._connection: _Connection | None = None
        self._done: Callable[[Outcome], None] | None = None  # the caller of the GET in flight
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._may_retry = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the one of the first GET

    @property
    def busy(self) -> bool:
        """A GET is in flight."""
        return self._done is not None

    def start_get(self, timeout: float | None, done: Callable[[Outcome], None]) -> None:
        """Start a GET; `done` is called once, later, on the running loop, with the body of a 200 answer or the
        exception saying why there is none (`HttpError`, `OSError` for connection failures, `TimeoutError`).
        Without a `timeout` the caller bounds the GET itself, ending it with `close` (no callback follows)."""
        assert self._done is None, "one GET at a time"
        loop = self._loop = self._loop or asyncio.get_running_loop()
        self._done = done
        if timeout is not None:
            self._timer = loop.call_later(timeout, self._timed_out)
        connection = self._connection
        if connection is not None and connection.open:
            self._may_retry = True  # closed by the server as the request went out: once more, on a new connection
            connection.exchange(self._request, self._settle)
        else:
            self._connect_and_send(loop)

    async def get(self, timeout: float) -> bytes:
        """The body of a 200 answer. Raises `HttpError`, `OSError` (connection failures) or `TimeoutError`."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def settle(outcome: Outcome) -> None:
            if future.done():
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        self.start_get(timeout, settle)
        try:
            return await future
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drops the connection at once (if any), abandoning a GET in flight; the next GET opens a new one."""
        self._done = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abandon()

    async def aclose(self) -> None:
        """`close`, and wait until the socket is closed."""
        connection = self._connection
        self.close()
        if connection is not None:
            await connection.lost

    def _connect_and_send(self, loop: asyncio.AbstractEventLoop) -> None:
        self._may_retry = False
        self._connecting = loop.create_task(self._connect(loop))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            _, connection = await loop.create_connection(lambda: _Connection(self._max_body), self._host, self._port)
        except Exception as exc:  # OSError mostly; whatever it is, the GET ends with it
            self._connecting = None
            self._settle(exc)
            return
        self._connecting = None
        if self._done is None:  # given up meanwhile
            connection.close()
            return
        self._connection = connection
        connection.exchange(self._request, self._settle)

    def _timed_out(self) -> None:
        self._timer = None
        self._settle(TimeoutError(f"no complete answer from {self._host}:{self._port} in time"))

    def _settle(self, outcome: Outcome) -> None:
        done = self._done
        if done is None:
            return
        if isinstance(outcome, BaseException):
            if self._may_retry and isinstance(outcome, _ClosedUnanswered):
                self._connection = None
                assert self._loop is not None
                self._connect_and_send(self._loop)
                return
            self.close()  # so a late or partial answer is never read as the next one
        else:
            self._done = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        done(outcome)
