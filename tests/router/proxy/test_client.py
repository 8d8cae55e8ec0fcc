"""The forwarding client against scripted HTTP/1.1 servers on loopback: keep-alive, bodies of every framing,
timeouts and failures as the retry rule expects them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from kvroute.router.proxy.client import BUFFER_LIMIT, UpstreamClient
from tests.conftest import next_loopback_host

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


def answer(body: bytes, *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


class Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.heads: list[bytes] = []
        self.host = next_loopback_host()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(script: Script) -> Server:
        server = await Server(script).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient(connect_timeout=2.0, keepalive_timeout=4.0)
    yield upstream
    await upstream.close()


async def test_a_connection_is_kept_alive_and_the_request_carries_host_length_and_headers(
    serve: Callable[[Script], Awaitable[Server]], client: UpstreamClient
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            server.heads.append(head)
            writer.write(answer(b'{"echo": %05d}' % len(body)))

    server = await serve(script)

    for size in (3, 5000):
        response = await client.post(server.host, server.port, "/v1/completions", b"x" * size, {"x-a": "1"})
        assert (response.status, response.content_type, response.content_length) == (200, "application/json", 15)
        assert await response.read() == b'{"echo": %05d}' % size
        response.close()

    assert server.connections == 1
    head = server.heads[0].decode()
    assert head.startswith("POST /v1/completions HTTP/1.1\r\n")
    assert f"Host: {server.host}:{server.port}" in head and "Content-Length: 3" in head and "x-a: 1" in head


async def test_a_chunked_stream_arrives_as_it_is_sent_and_the_connection_is_reused(
    serve: Callable[[Script], Awaitable[Server]], client: UpstreamClient
) -> None:
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(b"6\r\ndata:1\r\n")
            await writer.drain()
            await release.wait()
            writer.write(b"6\r\ndata:2\r\n0\r\n\r\n")
            release.clear()

    server = await serve(script)
    for _ in range(2):
        response = await client.post(server.host, server.port, "/v1/completions", b"{}", {})
        assert response.content_type == "text/event-stream" and response.content_length is None
        assert await response.content.readany() == b"data:1"
        release.set()
        assert await response.content.readany() == b"data:2"
        assert await response.content.readany() == b""

    assert server.connections == 1


async def test_a_body_without_length_ends_with_the_connection(
    serve: Callable[[Script], Awaitable[Server]], client: UpstreamClient
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()

    server = await serve(script)
    response = await client.post(server.host, server.port, "/x", b"", {})

    assert await response.read() == b"until the end"
    assert response.content_type == "application/octet-stream"


async def test_interim_answers_are_skipped(
    serve: Callable[[Script], Awaitable[Server]], client: UpstreamClient
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"{}"))
        await asyncio.sleep(5)

    server = await serve(script)
    response = await client.post(server.host, server.port, "/x", b"", {})

    assert response.status == 200 and await response.read() == b"{}"


async def test_a_connection_closed_before_the_status_line_is_a_server_disconnect(
    serve: Callable[[Script], Awaitable[Server]], client: UpstreamClient
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    server = await serve(script)

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post(server.host, server.port, "/x", b"", {})


async def test_a_refused_connection_is_a_connection_error(client: UpstreamClient) -> None:
    with pytest.raises(aiohttp.ClientConnectionError, match=r"cannot connect to 127\.0\.0\.1:1"):
        await client.post("127.0.0.1", 1, "/x", b"", {})


async def test_silence_before_the_status_line_and_mid_body_is_an_idle_timeout(
    serve: Callable[[Script], Awaitable[Server]], client: UpstreamClient
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
        await asyncio.sleep(5)

    quiet, stalled = await serve(silent), await serve(stalls)
    started = time.monotonic()
    with pytest.raises(aiohttp.SocketTimeoutError):
        await client.post(quiet.host, quiet.port, "/x", b"", {}, idle_timeout=0.2)
    response = await client.post(stalled.host, stalled.port, "/x", b"", {}, idle_timeout=0.2)
    assert await response.content.readany() == b"12345"
    with pytest.raises(aiohttp.SocketTimeoutError):
        await response.content.readany()

    assert time.monotonic() - started < 3


async def test_the_deadline_bounds_the_answer_and_its_body(
    serve: Callable[[Script], Awaitable[Server]], client: UpstreamClient
) -> None:
    async def trickles(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
        for _ in range(100):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    server = await serve(trickles)
    response = await client.post(
        server.host, server.port, "/x", b"", {}, idle_timeout=1, deadline=time.perf_counter() + 0.3
    )

    with pytest.raises(TimeoutError):
        await response.read()


async def test_a_body_cut_short_fails_and_a_fast_body_pauses_the_socket(
    serve: Callable[[Script], Awaitable[Server]], client: UpstreamClient
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n123")

    big = BUFFER_LIMIT * 4

    async def floods(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % big + b"y" * big)
        await writer.drain()

    short, flood = await serve(cut), await serve(floods)
    response = await client.post(short.host, short.port, "/x", b"", {})
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()

    response = await client.post(flood.host, flood.port, "/x", b"", {})
    await asyncio.sleep(0.2)  # the server wrote it all; the client stopped reading past the limit
    assert response._buffered <= BUFFER_LIMIT + 256 * 1024
    assert len(await response.read()) == big


async def test_a_header_that_would_split_the_request_is_dropped(
    serve: Callable[[Script], Awaitable[Server]], client: UpstreamClient
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        server.heads.append(head)
        writer.write(answer(b"{}"))

    server = await serve(script)
    response = await client.post(server.host, server.port, "/x", b"", {"x-bad": "a\r\nx-injected: 1", "x-ok": "2"})
    await response.read()

    assert b"x-injected" not in server.heads[0] and b"x-ok: 2" in server.heads[0]
