"""Client connections of the in-process proxy on a real socket: the cap, the header, keep-alive and body
timeouts, and parser-level errors answered in JSON (raw sockets: an HTTP client would not send these)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kvroute.router.proxy.connections import ConnectionLimits
from tests.support import eventually

from .conftest import ProxyServer

Fakes = Callable[..., Awaitable[Any]]
Proxies = Callable[..., Awaitable[ProxyServer]]

BODY = {"model": "fake-model", "prompt": "hello", "max_tokens": 2}
PARTIAL_HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nX-Slow: "


def closed(proxy: ProxyServer, reason: str) -> float:
    registry = proxy.metrics.registry
    return registry.get_sample_value("kvroute_proxy_connections_closed_total", {"reason": reason}) or 0.0


def open_connections(proxy: ProxyServer) -> float:
    return proxy.metrics.registry.get_sample_value("kvroute_proxy_connections") or 0.0


async def connect(proxy: ProxyServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(proxy.door.host, proxy.door.port)


async def until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sent until it closed the connection (a reset counts as closed)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def test_partial_header_connections_neither_starve_clients_nor_stay_open(fakes: Fakes, proxies: Proxies) -> None:
    fake = await fakes("pod")
    limits = ConnectionLimits(max_connections=50, header_timeout=1.0, keepalive_timeout=5.0)
    proxy = await proxies([fake.endpoint], connections=limits)

    held = []
    opened = time.monotonic()
    for _ in range(200):
        reader, writer = await connect(proxy)
        writer.write(PARTIAL_HEAD)
        held.append((reader, writer))
    statuses = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        for _ in range(20):  # each on a new connection, which the cap must make room for
            async with client.post(f"{proxy.base_url}/v1/completions", json=BODY) as response:
                statuses.append(response.status)
    leftovers = await asyncio.gather(*(until_closed(reader, 5.0) for reader, _ in held))
    all_closed_after = time.monotonic() - opened
    for _, writer in held:
        writer.close()

    assert statuses == [200] * 20
    assert leftovers == [b""] * 200  # closed without an answer
    assert all_closed_after < limits.header_timeout + 2.0
    assert closed(proxy, "evicted") >= 150
    assert closed(proxy, "header_timeout") >= 1
    assert closed(proxy, "evicted") + closed(proxy, "header_timeout") >= 200
    assert closed(proxy, "refused") == 0
    assert open_connections(proxy) <= 1


async def test_at_the_cap_with_every_connection_busy_a_newcomer_gets_a_json_503(fakes: Fakes, proxies: Proxies) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request, server: Any) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"choices": [{"index": 0, "text": "ok", "finish_reason": "length"}]})

    fake = await fakes("pod", slow)
    proxy = await proxies([fake.endpoint], connections=ConnectionLimits(max_connections=2))

    async def one() -> int:
        async with aiohttp.ClientSession() as client, client.post(f"{proxy.base_url}/v1/completions", json=BODY) as r:
            return r.status

    busy = [asyncio.create_task(one()) for _ in range(2)]
    await eventually(lambda: len(fake.received) == 2, message="both requests to reach the model server")
    reader, writer = await connect(proxy)
    answer = await until_closed(reader, 5.0)
    writer.close()
    release.set()

    status, headers, body = split(answer)
    assert (status, headers["content-type"]) == (503, "application/json")
    assert json.loads(body)["error"]["code"] == "too_many_connections"
    assert closed(proxy, "refused") == 1
    assert await asyncio.gather(*busy) == [200, 200]


async def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(
    fakes: Fakes, proxies: Proxies
) -> None:
    fake = await fakes("pod")
    proxy = await proxies([fake.endpoint], connections=ConnectionLimits(body_timeout=0.5))

    reader, writer = await connect(proxy)
    started = time.monotonic()
    writer.write(b'POST /v1/completions HTTP/1.1\r\nHost: router\r\nContent-Length: 1000\r\n\r\n{"model": ')
    answer = await until_closed(reader, 5.0)
    took = time.monotonic() - started
    writer.close()

    status, headers, body = split(answer)
    assert (status, headers["content-type"]) == (408, "application/json")
    assert json.loads(body)["error"]["code"] == "body_timeout"
    assert 0.4 < took < 2.0
    assert closed(proxy, "body_timeout") == 1
    assert fake.received == []


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
    fakes: Fakes, proxies: Proxies
) -> None:
    fake = await fakes("pod")
    proxy = await proxies([fake.endpoint], connections=ConnectionLimits(keepalive_timeout=1.0))

    reader, writer = await connect(proxy)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: router\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    _, headers, _ = split(head)
    await reader.readexactly(int(headers["content-length"]))
    answered = time.monotonic()
    rest = await until_closed(reader, 5.0)
    idle = time.monotonic() - answered
    writer.close()

    assert head.startswith(b"HTTP/1.1 200")
    assert rest == b""
    assert 0.8 < idle < 2.5


MARK = b"SMUGGLED-MARKER"


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"POST /v1/completions HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /" + MARK + b" HTTP/1.1\r\nHost: r\r\n\r\n",
            id="content-length-and-transfer-encoding",
        ),
        pytest.param(
            b"POST /v1/completions HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n" + MARK + b"\r\nab\r\n",
            id="bad-chunk-size",
        ),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: r\r\n" + MARK + b" <x>: v\r\n\r\n", id="bad-header-name"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: r\r\nX-A: " + MARK + b"\x00\r\n\r\n", id="nul-in-header"),
        pytest.param(b"GET /" + MARK + b"A" * 16 * 1024 + b" HTTP/1.1\r\nHost: r\r\n\r\n", id="16-KB-url"),
        pytest.param(b"\x16\x03\x01" + MARK + b"\r\n\r\n", id="not-http"),
    ],
)
async def test_requests_the_parser_rejects_get_json_errors_that_echo_nothing(
    fakes: Fakes, proxies: Proxies, request_bytes: bytes
) -> None:
    fake = await fakes("pod")
    proxy = await proxies([fake.endpoint])

    reader, writer = await connect(proxy)
    writer.write(request_bytes)
    answer = await until_closed(reader, 5.0)
    writer.close()

    status, headers, body = split(answer)
    error = json.loads(body)["error"]
    assert 400 <= status < 500
    assert headers["content-type"] == "application/json"
    assert set(error) == {"message", "type", "param", "code"}
    assert MARK not in answer
    assert fake.received == []
