"""The hardening flags of a real `kvroute router --mode proxy` process in front of a real simulator: idle and
half-sent connections cannot starve other clients, admin routes live on their own port, parser errors are JSON."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.support import free_port

pytestmark = pytest.mark.integration

MODEL = "kvroute-test"
BODY = {"model": MODEL, "prompt": "hello there", "max_tokens": 3}


def sample(metrics: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""


async def test_a_router_process_survives_partial_header_connections_and_keeps_admin_apart(
    sim_fleet: Any, routers: Callable[..., Any], tmp_path: Any
) -> None:
    sim = sim_fleet.start("--model", MODEL, "--time-scale", "0.05")
    config = tmp_path / "router.yaml"
    config.write_text("apiVersion: kvroute.io/v1alpha1\nkind: EndpointPickerConfig\n")
    admin_port = free_port()
    router = routers(
        f"{sim.host}:{sim.port}",
        *("--max-connections", "50", "--header-read-timeout", "1s", "--keepalive-timeout", "5s"),
        *("--admin-port", str(admin_port)),
        config=config,
    )

    held = []
    opened = time.monotonic()
    for _ in range(200):
        reader, writer = await asyncio.open_connection(router.host, router.port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nX-Slow: ")
        held.append((reader, writer))
    statuses = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        for _ in range(10):
            async with client.post(f"{router.base_url}/v1/completions", json=BODY) as response:
                statuses.append(response.status)
        leftovers = await asyncio.gather(*(until_closed(reader, 5.0) for reader, _ in held))
        all_closed_after = time.monotonic() - opened
        for _, writer in held:
            writer.close()
        async with client.get(f"{router.base_url}/metrics") as response:
            metrics = await response.text()
        async with client.post(f"{router.base_url}/admin/reload") as on_api_port:
            api_answer = await on_api_port.json()
        async with client.post(f"http://127.0.0.1:{admin_port}/admin/reload") as on_admin_port:
            admin_answer = await on_admin_port.json()

    reader, writer = await asyncio.open_connection(router.host, router.port)
    writer.write(b"GET /" + b"A" * 16 * 1024 + b" HTTP/1.1\r\nHost: r\r\n\r\n")
    long_url = await until_closed(reader, 5.0)
    writer.close()

    assert statuses == [200] * 10
    assert leftovers == [b""] * 200
    assert all_closed_after < 3.0
    evicted = sample(metrics, 'kvroute_proxy_connections_closed_total{reason="evicted"}')
    timed_out = sample(metrics, 'kvroute_proxy_connections_closed_total{reason="header_timeout"}')
    assert evicted + timed_out >= 200
    assert sample(metrics, 'kvroute_proxy_connections_closed_total{reason="refused"}') == 0
    assert sample(metrics, "kvroute_proxy_connections") <= 2  # the scrape's own connection
    assert "reached its cap of 50 open connections" in router.output()
    assert (on_api_port.status, api_answer["error"]["code"]) == (404, "not_found")
    assert (on_admin_port.status, admin_answer["status"]) == (200, "reloaded")
    head, _, body = long_url.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1].startswith(b"4")
    assert b"application/json" in head
    assert json.loads(body)["error"]["code"] in ("bad_http_request", "uri_too_long")
    assert b"AAAA" not in long_url
