"""The scraper's HTTP client against real servers on loopback: aiohttp for what servers normally send, and a raw
asyncio server for byte-exact answers (framings, fragments, broken responses)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from kvroute.router.datalayer.http_client import MAX_HEAD_BYTES, HttpError, HttpGetter

HOST = "127.0.0.65"
BODY = b'vllm:num_requests_waiting{model_name="m"} 3.0\n' * 50


class AiohttpServer:
    """`/metrics` answered by `handler`; remembers the client port (one per connection) of every request."""

    def __init__(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]], **runner: Any) -> None:
        self.handler = handler
        self.peers: list[int] = []
        self.port = 0
        self._runner_options = runner
        self.runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername")[1])
        return await self.handler(request)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None, **self._runner_options)
        await self.runner.setup()
        await web.TCPSite(self.runner, HOST, 0).start()
        self.port = self.runner.addresses[0][1]

    @property
    def open_connections(self) -> int:
        assert self.runner is not None and self.runner.server is not None
        return len(self.runner.server.connections)

    def getter(self, max_body_bytes: int = 1 << 20) -> HttpGetter:
        return HttpGetter(HOST, self.port, "/metrics", max_body_bytes=max_body_bytes)


@pytest.fixture
async def aiohttp_server() -> AsyncIterator[Callable[..., Awaitable[AiohttpServer]]]:
    started: list[AiohttpServer] = []

    async def start(handler: Callable[[web.Request], Awaitable[web.StreamResponse]], **runner: Any) -> AiohttpServer:
        server = AiohttpServer(handler, **runner)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        assert server.runner is not None
        await server.runner.cleanup()


@dataclass
class Reply:
    raw: bytes
    fragmented: bool = False  # one byte per write
    close: bool = False  # close the connection after it


Answer = Callable[[int, bytes], Reply | None]  # (connection number from 1, request) -> reply; None: close


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Answer], Awaitable[tuple[int, list[bytes]]]]]:
    """`await raw_server(answer)` serves `answer(connection_number, request)` byte for byte; returns the port and
    the requests seen."""
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> tuple[int, list[bytes]]:
        seen: list[bytes] = []
        connections = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            number = connections
            try:
                while True:
                    request = await reader.readuntil(b"\r\n\r\n")
                    seen.append(request)
                    reply = answer(number, request)
                    if reply is None:
                        break
                    if reply.fragmented:
                        for i in range(len(reply.raw)):
                            writer.write(reply.raw[i : i + 1])
                            await writer.drain()
                            await asyncio.sleep(0)
                    else:
                        writer.write(reply.raw)
                        await writer.drain()
                    if reply.close:
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, HOST, 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1], seen

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def ok(body: bytes, *headers: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body) + b"".join(h + b"\r\n" for h in headers)
    return head + b"\r\n" + body


def always(raw: bytes, **options: bool) -> Answer:
    return lambda number, request: Reply(raw, **options)


async def test_content_length_answers_reuse_one_connection(
    aiohttp_server: Callable[..., Awaitable[AiohttpServer]],
) -> None:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="text/plain")

    server = await aiohttp_server(metrics)
    getter = server.getter()

    bodies = [await getter.get(1.0) for _ in range(5)]
    await getter.aclose()

    assert bodies == [BODY] * 5
    assert len(set(server.peers)) == 1  # one connection for every GET
    await asyncio.sleep(0.05)
    assert server.open_connections == 0


async def test_the_request_asks_for_plain_text_without_compression(
    raw_server: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    port, seen = await raw_server(always(ok(b"x")))
    getter = HttpGetter(HOST, port, "/metrics", max_body_bytes=100)

    await getter.get(1.0)
    await getter.aclose()

    lines = seen[0].split(b"\r\n")
    assert lines[0] == b"GET /metrics HTTP/1.1"
    assert f"Host: {HOST}:{port}".encode() in lines
    assert b"Accept-Encoding: identity" in lines


async def test_chunked_answers_are_reassembled(aiohttp_server: Callable[..., Awaitable[AiohttpServer]]) -> None:
    async def metrics(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no content length: chunked
        await response.prepare(request)
        for start in range(0, len(BODY), 700):
            await response.write(BODY[start : start + 700])
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response

    server = await aiohttp_server(metrics)
    getter = server.getter()

    assert await getter.get(1.0) == BODY
    assert await getter.get(1.0) == BODY
    await getter.aclose()
    assert len(set(server.peers)) == 1


async def test_a_connection_closed_by_the_server_is_replaced(
    aiohttp_server: Callable[..., Awaitable[AiohttpServer]],
) -> None:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=BODY, headers={"Connection": "close"})

    server = await aiohttp_server(metrics)
    getter = server.getter()

    assert [await getter.get(1.0) for _ in range(3)] == [BODY] * 3
    await getter.aclose()
    assert len(set(server.peers)) == 3


async def test_an_idle_connection_the_server_timed_out_is_replaced(
    aiohttp_server: Callable[..., Awaitable[AiohttpServer]],
) -> None:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=BODY)

    server = await aiohttp_server(metrics, keepalive_timeout=0.05)
    getter = server.getter()

    assert await getter.get(1.0) == BODY
    await asyncio.sleep(0.2)  # the server closes the idle connection meanwhile
    assert await getter.get(1.0) == BODY
    await getter.aclose()
    assert len(set(server.peers)) == 2


async def test_a_close_racing_the_request_is_retried_once_on_a_new_connection(
    raw_server: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    # The first connection answers once, then closes without answering, as a server whose keep-alive timer fires
    # just as the next request arrives.
    port, seen = await raw_server(lambda n, request: Reply(ok(b"x")) if n > 1 or len(seen) == 1 else None)
    getter = HttpGetter(HOST, port, "/metrics", max_body_bytes=100)

    assert await getter.get(1.0) == b"x"
    assert await getter.get(1.0) == b"x"
    await getter.aclose()
    assert len(seen) == 3


async def test_a_fresh_connection_closed_unanswered_fails(
    raw_server: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    port, seen = await raw_server(lambda n, request: None)
    getter = HttpGetter(HOST, port, "/metrics", max_body_bytes=100)

    with pytest.raises(ConnectionError, match="closed before the response"):
        await getter.get(1.0)
    assert len(seen) == 1


async def test_a_slow_server_times_out_and_the_next_get_uses_a_new_connection(
    aiohttp_server: Callable[..., Awaitable[AiohttpServer]],
) -> None:
    delays = [0.0, 0.5, 0.0]

    async def metrics(request: web.Request) -> web.Response:
        await asyncio.sleep(delays.pop(0))
        return web.Response(body=BODY)

    server = await aiohttp_server(metrics)
    getter = server.getter()
    await getter.get(1.0)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await getter.get(0.1)
    took = time.monotonic() - started
    assert await getter.get(1.0) == BODY  # not the late answer to the timed-out request
    await getter.aclose()

    assert 0.1 <= took < 0.3
    assert len(set(server.peers)) == 2


@pytest.mark.parametrize("status", [500, 302, 204])
async def test_any_status_but_200_fails_and_redirects_are_not_followed(
    aiohttp_server: Callable[..., Awaitable[AiohttpServer]], status: int
) -> None:
    async def elsewhere(request: web.Request) -> web.Response:
        return web.Response(body=BODY)

    target = await aiohttp_server(elsewhere)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": f"http://{HOST}:{target.port}/metrics"})

    getter = (await aiohttp_server(metrics)).getter()

    with pytest.raises(HttpError, match=f"HTTP {status}"):
        await getter.get(1.0)
    assert target.peers == []


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_the_limit_fails(
    aiohttp_server: Callable[..., Awaitable[AiohttpServer]], chunked: bool
) -> None:
    async def metrics(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=BODY)
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(BODY)
        await response.write_eof()
        return response

    getter = (await aiohttp_server(metrics)).getter(max_body_bytes=len(BODY) - 1)

    with pytest.raises(HttpError, match=f"body larger than {len(BODY) - 1} bytes"):
        await getter.get(1.0)


async def test_a_server_that_is_down_fails_with_a_connection_error() -> None:
    getter = HttpGetter(HOST, 9, "/metrics", max_body_bytes=100)

    with pytest.raises(ConnectionRefusedError):
        await getter.get(1.0)


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("reply", "body"),
    [
        (Reply(ok(b"hello")), b"hello"),
        (Reply(ok(b"hello", b"X-Pad: " + b"p" * 100), fragmented=True), b"hello"),
        (Reply(ok(b"")), b""),
        (Reply(CHUNKED + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), b"hello world"),
        (Reply(CHUNKED + b"5;x=y\r\nhello\r\n0\r\nTrailer: 1\r\n\r\n", fragmented=True), b"hello"),
        (Reply(b"HTTP/1.1 200\r\ncontent-length:  5 \r\ncontent-encoding: identity\r\n\r\nhello"), b"hello"),
        (Reply(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"), b"hello"),
        (Reply(b"HTTP/1.1 200 OK\r\n\r\nuntil close", close=True), b"until close"),
    ],
)
async def test_framings(
    raw_server: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]], reply: Reply, body: bytes
) -> None:
    port, _ = await raw_server(lambda n, request: reply)
    getter = HttpGetter(HOST, port, "/metrics", max_body_bytes=100)

    assert await getter.get(1.0) == body
    assert await getter.get(1.0) == body
    await getter.aclose()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello", "compressed body"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "unsupported transfer coding"),
        (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n", "malformed chunk size line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", "chunk not followed by CRLF"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES, "response head larger than"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", "body larger than 100 bytes"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n", "body larger than 100 bytes"),
    ],
)
async def test_malformed_answers_fail_with_a_reason(
    raw_server: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]], answer: bytes, message: str
) -> None:
    port, _ = await raw_server(always(answer))
    getter = HttpGetter(HOST, port, "/metrics", max_body_bytes=100)

    with pytest.raises(HttpError, match=message):
        await getter.get(1.0)
    await getter.aclose()


async def test_a_connection_cut_mid_response_fails(
    raw_server: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    port, _ = await raw_server(always(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhalf", close=True))
    getter = HttpGetter(HOST, port, "/metrics", max_body_bytes=100)

    with pytest.raises(ConnectionError, match="mid-response"):
        await getter.get(1.0)
    await getter.aclose()


async def test_bytes_beyond_the_response_end_the_connection(
    raw_server: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    port, _ = await raw_server(always(ok(b"one") + ok(b"two")))
    getter = HttpGetter(HOST, port, "/metrics", max_body_bytes=100)

    assert await getter.get(1.0) == b"one"
    assert await getter.get(1.0) == b"one"  # never the stray "two"
    await getter.aclose()


async def test_cancelling_a_get_closes_its_connection(aiohttp_server: Callable[..., Awaitable[AiohttpServer]]) -> None:
    async def metrics(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(body=BODY)

    server = await aiohttp_server(metrics, handler_cancellation=True)
    getter = server.getter()
    task = asyncio.get_running_loop().create_task(getter.get(5.0))
    await asyncio.sleep(0.05)
    assert server.open_connections == 1

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)

    assert server.open_connections == 0


async def test_answers_of_changing_lengths_and_framings_on_one_connection(
    raw_server: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    # A head like the previous one is not parsed again: each answer must still be framed by its own head.
    replies = [
        Reply(ok(b"one")),
        Reply(ok(b"one")),
        Reply(ok(b"three")),
        Reply(ok(b"four"), fragmented=True),
        Reply(CHUNKED + b"4\r\nfive\r\n0\r\n\r\n"),
        Reply(CHUNKED + b"3\r\nsix\r\n0\r\n\r\n"),
        Reply(ok(b"seven")),
    ]
    port, seen = await raw_server(lambda n, request: replies[len(seen) - 1])
    getter = HttpGetter(HOST, port, "/metrics", max_body_bytes=100)

    bodies = [await getter.get(1.0) for _ in replies]
    await getter.aclose()

    assert bodies == [b"one", b"one", b"three", b"four", b"five", b"six", b"seven"]
    assert len(seen) == len(replies)  # all on the first connection


async def test_a_get_without_timeout_waits_until_the_caller_closes_it(
    aiohttp_server: Callable[..., Awaitable[AiohttpServer]],
) -> None:
    delays = [0.5, 0.0]

    async def metrics(request: web.Request) -> web.Response:
        await asyncio.sleep(delays.pop(0))
        return web.Response(body=BODY)

    server = await aiohttp_server(metrics)
    getter = server.getter()
    outcomes: list[object] = []

    getter.start_get(None, outcomes.append)
    await asyncio.sleep(0.2)
    assert getter.busy and outcomes == []
    getter.close()
    await asyncio.sleep(0.5)  # the late answer arrives on a connection that is gone

    assert outcomes == []
    assert not getter.busy
    assert await getter.get(1.0) == BODY
    await getter.aclose()
    assert len(set(server.peers)) == 2
