"""The proxy in-process in front of scriptable fake model servers: relaying, retries, streaming, disconnects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support import eventually

from .conftest import ProxyServer

MODEL = "fake-model"
CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: recording-hook
    parameters: {client_header: x-served-by}
  - type: queue-scorer
  - type: max-score-picker
    parameters: {maxNumOfEndpoints: 2}
schedulingProfiles:
  - name: default
    plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""

BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 2}

Fakes = Callable[..., Awaitable[Any]]
Proxies = Callable[..., Awaitable[ProxyServer]]


def record(proxy: ProxyServer) -> Any:
    return proxy.holder.current.plugins["recording-hook"].record  # type: ignore[attr-defined]


def sample(proxy: ProxyServer, name: str, **labels: str) -> float:
    return proxy.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_json_answer_is_relayed_with_the_model_servers_headers(fakes: Fakes, proxies: Proxies) -> None:
    fake = await fakes("pod-a")
    proxy = await proxies([fake.endpoint], CONFIG)

    async with (
        aiohttp.ClientSession() as client,
        client.post(
            f"{proxy.base_url}/v1/completions",
            json=BODY,
            headers={
                "x-request-id": "abc",
                "x-gateway-destination-endpoint": "10.1.1.1:80",
                "X-Prefiller-Host-Port": "10.1.1.1:81",
                "Accept-Encoding": "gzip",
                "Authorization": "Bearer t",
            },
        ) as response,
    ):
        body = await response.json()
        headers = response.headers

    assert response.status == 200
    assert body["usage"]["completion_tokens"] == 2
    assert headers["x-inference-pod"] == "pod-a"
    assert headers["x-served-by"] == fake.endpoint.id
    assert headers["x-request-id"] == "abc"
    assert "Keep-Alive" not in headers
    [(forwarded, sent)] = fake.received
    assert sent == BODY
    assert forwarded["x-request-id"] == "abc"
    assert forwarded["authorization"] == "Bearer t"
    assert not any(k.startswith(("x-gateway-destination", "x-prefiller")) for k in forwarded)
    assert "gzip" not in forwarded.get("accept-encoding", "")
    [completion] = record(proxy).completions
    assert (completion.request_id, completion.error, completion.output_tokens) == ("abc", None, 2)
    assert sample(proxy, "kvroute_requests_total", api="completions", code="200") == 1


async def test_a_refused_connection_moves_on_to_the_fallback(fakes: Fakes, proxies: Proxies, kit: Any) -> None:
    live = await fakes("live", waiting=3)  # the queue scorer prefers the dead endpoint (no metrics: queue 0)
    dead = kit.dead_endpoint()
    proxy = await proxies([dead, live.endpoint], CONFIG)

    async with aiohttp.ClientSession() as client:
        for _ in range(5):
            async with client.post(f"{proxy.base_url}/v1/completions", json=BODY) as response:
                assert response.status == 200
                assert response.headers["x-inference-pod"] == "live"

    assert len(live.received) == 5
    assert {endpoint for _, endpoint, _ in record(proxy).headers} == {live.endpoint.id}
    assert [c.error for c in record(proxy).completions] == [None] * 5
    assert sample(proxy, "kvroute_requests_in_flight", endpoint=dead.id) == 0


async def test_no_reachable_endpoint_is_a_502(proxies: Proxies, kit: Any) -> None:
    proxy = await proxies([kit.dead_endpoint(), kit.dead_endpoint()], CONFIG)

    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{proxy.base_url}/v1/completions", json=BODY) as response,
    ):
        body = await response.json()

    assert response.status == 502
    assert body["error"]["code"] == "upstream_unreachable"
    [completion] = record(proxy).completions
    assert completion.error is not None and completion.error.startswith("upstream unreachable")


async def test_an_upstream_error_status_is_passed_through(fakes: Fakes, proxies: Proxies) -> None:
    async def busy(request: web.Request, server: Any) -> web.StreamResponse:
        return web.json_response({"error": {"message": "slow down"}}, status=429)

    fake = await fakes("busy", busy)
    proxy = await proxies([fake.endpoint], CONFIG)

    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{proxy.base_url}/v1/completions", json=BODY) as response,
    ):
        body = await response.json()

    assert (response.status, body) == (429, {"error": {"message": "slow down"}})
    assert record(proxy).completions[0].status == 429
    assert sample(proxy, "kvroute_requests_total", api="completions", code="429") == 1


async def test_sse_chunks_reach_the_client_as_they_are_produced(fakes: Fakes, proxies: Proxies, kit: Any) -> None:
    async def slow_stream(request: web.Request, server: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(kit.text_chunk("a"))
        await asyncio.sleep(0.3)
        await response.write(kit.text_chunk("b", "length"))
        await response.write(b"data: [DONE]\n\n")
        return response

    fake = await fakes("streamer", slow_stream)
    proxy = await proxies([fake.endpoint], CONFIG)

    arrivals: list[tuple[float, bytes]] = []
    async with aiohttp.ClientSession() as client:
        started = time.monotonic()
        async with client.post(f"{proxy.base_url}/v1/completions", json={**BODY, "stream": True}) as response:
            async for chunk in response.content.iter_any():
                arrivals.append((time.monotonic() - started, chunk))

    assert arrivals[0][1] == kit.text_chunk("a")
    assert arrivals[0][0] < 0.2
    assert arrivals[-1][0] >= 0.3
    assert b"".join(c for _, c in arrivals).endswith(b"data: [DONE]\n\n")
    [completion] = record(proxy).completions
    assert (completion.error, completion.output_tokens) == (None, 2)


async def test_an_upstream_failing_mid_stream_ends_the_stream_with_an_error_event(
    fakes: Fakes, proxies: Proxies, kit: Any
) -> None:
    async def breaks(request: web.Request, server: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(kit.text_chunk("a") + kit.text_chunk("b"))
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response

    fake = await fakes("breaks", breaks)
    proxy = await proxies([fake.endpoint], CONFIG)

    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{proxy.base_url}/v1/completions", json={**BODY, "stream": True}) as response,
    ):
        body = await response.read()

    assert response.status == 200
    assert body.startswith(kit.text_chunk("a") + kit.text_chunk("b"))
    assert b'"code": "upstream_failed"' in body
    assert b"[DONE]" not in body
    [completion] = record(proxy).completions
    assert completion.error is not None and completion.error.startswith("upstream failed mid-stream")
    assert completion.output_tokens == 2
    assert sample(proxy, "kvroute_requests_total", api="completions", code="502") == 1


async def test_a_client_leaving_mid_stream_completes_the_request_once_and_frees_the_upstream(
    fakes: Fakes, proxies: Proxies, kit: Any
) -> None:
    async def endless(request: web.Request, server: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(200):
            await response.write(kit.text_chunk("x"))
            await asyncio.sleep(0.02)
        return response

    fake = await fakes("endless", endless)
    proxy = await proxies([fake.endpoint], CONFIG)

    async with aiohttp.ClientSession() as client:
        response = await client.post(f"{proxy.base_url}/v1/completions", json={**BODY, "stream": True})
        await response.content.readany()
        response.close()

    await eventually(lambda: bool(record(proxy).completions))
    await asyncio.wait_for(fake.disconnected.wait(), 3)
    await asyncio.sleep(0.1)
    [completion] = record(proxy).completions
    assert completion.error == "client disconnected"
    assert sample(proxy, "kvroute_requests_total", api="completions", code="499") == 1
    assert sample(proxy, "kvroute_requests_in_flight", endpoint=fake.endpoint.id) == 0


async def test_a_client_leaving_before_the_answer_completes_the_request_once(fakes: Fakes, proxies: Proxies) -> None:
    async def thinks(request: web.Request, server: Any) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.json_response({})

    fake = await fakes("thinks", thinks)
    proxy = await proxies([fake.endpoint], CONFIG)

    async with aiohttp.ClientSession() as client:
        with pytest.raises(TimeoutError):
            await client.post(f"{proxy.base_url}/v1/completions", json=BODY, timeout=aiohttp.ClientTimeout(total=0.2))

    await eventually(lambda: bool(record(proxy).completions))
    await asyncio.wait_for(fake.disconnected.wait(), 3)
    assert [c.error for c in record(proxy).completions] == ["client disconnected"]


async def test_bodies_over_the_limit_are_refused_with_413(fakes: Fakes, proxies: Proxies) -> None:
    fake = await fakes("pod")
    proxy = await proxies([fake.endpoint], CONFIG, max_body_bytes=1024)
    big = {**BODY, "prompt": "x" * 2000}

    async def chunked() -> Any:
        yield b'{"model": "m", "prompt": "'
        for _ in range(20):
            yield b"y" * 100
        yield b'"}'

    async with aiohttp.ClientSession() as client:
        async with client.post(f"{proxy.base_url}/v1/completions", json=big) as announced:
            announced_body = await announced.json()
        async with client.post(f"{proxy.base_url}/v1/chat/completions", data=chunked()) as streamed:
            streamed_body = await streamed.json()

    assert (announced.status, announced_body["error"]["code"]) == (413, "body_too_large")
    assert (streamed.status, streamed_body["error"]["code"]) == (413, "body_too_large")
    assert fake.received == []
    assert sample(proxy, "kvroute_requests_total", api="completions", code="413") == 1
    assert sample(proxy, "kvroute_requests_total", api="chat", code="413") == 1


async def test_unknown_routes_and_methods_get_json_errors(fakes: Fakes, proxies: Proxies) -> None:
    proxy = await proxies([(await fakes("pod")).endpoint], CONFIG)

    async with aiohttp.ClientSession() as client:
        async with client.get(f"{proxy.base_url}/nope") as missing:
            missing_body = await missing.json()
        async with client.get(f"{proxy.base_url}/v1/completions") as wrong_method:
            wrong_body = await wrong_method.json()

    assert (missing.status, missing_body["error"]["code"]) == (404, "not_found")
    assert (wrong_method.status, wrong_body["error"]["code"]) == (405, "method_not_allowed")


async def test_models_are_the_union_of_the_endpoints_models(fakes: Fakes, proxies: Proxies, kit: Any) -> None:
    a = await fakes("a", models=["base", "lora-1"])
    b = await fakes("b", models=["base", "lora-2"])
    proxy = await proxies([a.endpoint, b.endpoint, kit.dead_endpoint()], CONFIG)

    async with aiohttp.ClientSession() as client, client.get(f"{proxy.base_url}/v1/models") as response:
        body = await response.json()

    assert response.status == 200
    assert sorted(card["id"] for card in body["data"]) == ["base", "lora-1", "lora-2"]


async def test_ready_once_an_endpoint_has_fresh_metrics(fakes: Fakes, proxies: Proxies, kit: Any) -> None:
    fake = await fakes("pod")
    unready = await proxies([kit.dead_endpoint()], CONFIG)
    ready = await proxies([fake.endpoint, kit.dead_endpoint()], CONFIG)
    await eventually(lambda: not ready.pool.snapshot()[0].metrics.stale)

    async with aiohttp.ClientSession() as client:
        async with client.get(f"{unready.base_url}/readyz") as no:
            no_body = await no.json()
        async with client.get(f"{ready.base_url}/readyz") as yes:
            yes_body = await yes.json()
        async with client.get(f"{unready.base_url}/healthz") as alive:
            assert alive.status == 200
        async with client.get(f"{ready.base_url}/metrics") as metrics:
            text = await metrics.text()

    assert (no.status, no_body["error"]["message"]) == (503, "not ready: no endpoint has fresh metrics")
    assert (yes.status, yes_body) == (200, {"status": "ready", "endpoints": 2, "fresh": 1})
    assert "kvroute_scheduler_duration_seconds" in text


async def test_chat_streams_pass_through_untouched(fakes: Fakes, proxies: Proxies, kit: Any) -> None:
    events = [
        kit.sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
        kit.sse({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}),
        kit.sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        b"data: [DONE]\n\n",
    ]

    async def chat(request: web.Request, server: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
        return response

    fake = await fakes("chat", chat)
    proxy = await proxies([fake.endpoint], CONFIG)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}

    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{proxy.base_url}/v1/chat/completions", json=body) as response,
    ):
        received = await response.read()

    assert received == b"".join(events)
    [completion] = record(proxy).completions
    assert (completion.error, completion.output_tokens) == (None, 1)


async def test_a_body_of_unknown_length_cut_off_upstream_is_cut_off_for_the_client(
    fakes: Fakes, proxies: Proxies
) -> None:
    async def truncated(request: web.Request, server: Any) -> web.StreamResponse:
        if len(server.received) > 1:
            return web.json_response({"choices": []})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"choices": [')
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response

    fake = await fakes("truncated", truncated)
    proxy = await proxies([fake.endpoint], CONFIG)

    async with aiohttp.ClientSession() as client:
        async with client.post(f"{proxy.base_url}/v1/completions", json=BODY) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        async with client.post(f"{proxy.base_url}/v1/completions", json=BODY) as again:
            assert (again.status, await again.json()) == (200, {"choices": []})  # the proxy still serves

    [first, second] = record(proxy).completions
    assert first.error is not None and first.error.startswith("upstream failed mid-stream")
    assert second.error is None
