"""The proxy in front of model servers that go quiet: `upstream_idle_timeout` bounds their silence, not a request's
duration, and the request still completes exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from kvroute.router.proxy.upstream import create_session

from .conftest import ProxyServer

CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: recording-hook
  - type: queue-scorer
  - type: max-score-picker
    parameters: {maxNumOfEndpoints: 2}
schedulingProfiles:
  - name: default
    plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""
BODY = {"model": "fake-model", "prompt": "hello", "max_tokens": 2}
IDLE = 0.3

Fakes = Callable[..., Awaitable[Any]]
Proxies = Callable[..., Awaitable[ProxyServer]]


def record(proxy: ProxyServer) -> Any:
    return proxy.holder.current.plugins["recording-hook"].record  # type: ignore[attr-defined]


def sample(proxy: ProxyServer, name: str, **labels: str) -> float:
    return proxy.metrics.registry.get_sample_value(name, labels) or 0.0


async def silent(request: web.Request, server: Any) -> web.StreamResponse:
    await asyncio.sleep(30)
    return web.json_response({})


async def test_a_model_server_silent_before_answering_gets_a_504_and_is_not_retried(
    fakes: Fakes, proxies: Proxies
) -> None:
    hung, other = await fakes("hung", silent), await fakes("other", silent)
    proxy = await proxies([hung.endpoint, other.endpoint], CONFIG, upstream_idle_timeout=IDLE)

    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{proxy.base_url}/v1/completions", json=BODY) as response,
    ):
        body = await response.json()
    took = time.monotonic() - started

    assert response.status == 504
    assert body["error"]["code"] == "upstream_timeout"
    assert IDLE <= took < IDLE + 1.0
    assert len(hung.received) + len(other.received) == 1  # the endpoint has the request: not sent elsewhere
    [completion] = record(proxy).completions
    assert completion.error == "upstream sent nothing within the idle timeout"
    assert sample(proxy, "kvroute_requests_total", api="completions", code="504") == 1
    served = hung if hung.received else other
    assert sample(proxy, "kvroute_requests_in_flight", endpoint=served.endpoint.id) == 0
    await asyncio.wait_for(served.disconnected.wait(), 3)  # the upstream connection is given up


async def test_a_stream_that_stalls_ends_with_an_error_event_and_completes_once(
    fakes: Fakes, proxies: Proxies, kit: Any
) -> None:
    async def stalls(request: web.Request, server: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(kit.text_chunk("a"))
        await asyncio.sleep(30)
        return response

    fake = await fakes("stalls", stalls)
    proxy = await proxies([fake.endpoint], CONFIG, upstream_idle_timeout=IDLE)

    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{proxy.base_url}/v1/completions", json={**BODY, "stream": True}) as response,
    ):
        body = await response.read()
    took = time.monotonic() - started

    assert response.status == 200
    assert body.startswith(kit.text_chunk("a"))
    assert b'"code": "upstream_failed"' in body
    assert IDLE <= took < IDLE + 1.0
    [completion] = record(proxy).completions
    assert completion.error is not None and completion.error.startswith("upstream failed mid-stream")
    assert completion.output_tokens == 1
    assert sample(proxy, "kvroute_requests_in_flight", endpoint=fake.endpoint.id) == 0


async def test_a_slow_but_steady_stream_outlasts_the_idle_timeout(fakes: Fakes, proxies: Proxies, kit: Any) -> None:
    async def steady(request: web.Request, server: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(6):
            await asyncio.sleep(IDLE / 2)
            await response.write(kit.text_chunk("x"))
        await response.write(b"data: [DONE]\n\n")
        return response

    fake = await fakes("steady", steady)
    proxy = await proxies([fake.endpoint], CONFIG, upstream_idle_timeout=IDLE)

    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{proxy.base_url}/v1/completions", json={**BODY, "stream": True}) as response,
    ):
        body = await response.read()

    assert body.endswith(b"data: [DONE]\n\n")
    [completion] = record(proxy).completions
    assert (completion.error, completion.output_tokens) == (None, 6)


async def test_zero_leaves_the_upstream_unbounded() -> None:
    async with create_session(idle_timeout=0) as off, create_session(idle_timeout=7.5) as on:
        assert off.timeout.sock_read is None
        assert on.timeout.sock_read == 7.5
        assert off.timeout.total is None  # a generation may take as long as it takes
