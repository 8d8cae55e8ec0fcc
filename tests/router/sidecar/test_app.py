"""The sidecar between fake prefill and decode engines (in-process aiohttp servers on 127.0.0.0/8)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from kvroute.router.sidecar.app import Sidecar, SidecarSettings

TRANSFER = {"do_remote_prefill": True, "do_remote_decode": False, "remote_engine_id": "p", "remote_block_ids": [0]}

Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


async def prefilled(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return web.json_response({"choices": [{"text": "x", "finish_reason": "length"}], "kv_transfer_params": TRANSFER})


async def decoded(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    if not body.get("stream"):
        return web.json_response({"choices": [{"text": "decoded", "finish_reason": "length"}]})
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for i in range(3):
        await response.write(f'data: {{"choices": [{{"text": "t{i}"}}]}}\n\n'.encode())
    await response.write(b"data: [DONE]\n\n")
    return response


@dataclass
class Engine:
    """A fake engine recording what it received: (path, headers, body)."""

    handler: Handler
    received: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    server: TestServer | None = None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.received.append((request.path_qs, {k.lower(): v for k, v in request.headers.items()}, body))
        return await self.handler(request, body or {})

    async def start(self, host: str) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self.server = TestServer(app, host=host, port=0)
        await self.server.start_server()
        return f"{host}:{self.server.port}"


@dataclass
class Rig:
    prefill: Engine
    decode: Engine
    prefiller: str  # the prefill engine's ip:port
    url: str  # the sidecar's base URL
    client: aiohttp.ClientSession


@pytest.fixture
async def rig_factory() -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    cleanup: list[Any] = []

    async def make(prefill: Handler = prefilled, decode: Handler = decoded, **settings: Any) -> Rig:
        prefill_engine, decode_engine = Engine(prefill), Engine(decode)
        prefiller = await prefill_engine.start("127.0.5.1")
        decoder = await decode_engine.start("127.0.5.2")
        sidecar = Sidecar(SidecarSettings(decoder_url=URL(f"http://{decoder}"), **settings))
        server = TestServer(sidecar.app(), host="127.0.5.3", port=0)
        await server.start_server()
        client = aiohttp.ClientSession()
        cleanup.extend([client, server, prefill_engine.server, decode_engine.server])
        return Rig(prefill_engine, decode_engine, prefiller, f"http://127.0.5.3:{server.port}", client)

    yield make
    for item in cleanup:
        await item.close()


BODY = {"model": "m", "prompt": "hello " * 20, "max_tokens": 7}


async def test_a_request_with_the_header_is_prefilled_remotely_then_decoded_locally(rig_factory: Any) -> None:
    rig = await rig_factory()
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"x-prefiller-host-port": rig.prefiller, "x-request-id": "req-1"}
    async with rig.client.post(f"{rig.url}/v1/completions", json=body, headers=headers) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream"
        events = [line async for line in response.content if line.startswith(b"data: ")]

    assert len(events) == 4 and events[-1] == b"data: [DONE]\n"
    [(path, sent, prefill)] = rig.prefill.received
    assert path == "/v1/completions"
    assert prefill == {
        "model": "m",
        "prompt": BODY["prompt"],
        "max_tokens": 1,
        "stream": False,
        "cache_hit_threshold": 0,
        "kv_transfer_params": {
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        },
    }
    [(path, received, decode)] = rig.decode.received
    assert path == "/v1/completions"
    assert decode == {**body, "kv_transfer_params": TRANSFER}
    assert sent["x-request-id"] == received["x-request-id"] == "req-1"
    assert "x-prefiller-host-port" not in sent and "x-prefiller-host-port" not in received


async def test_the_first_of_several_prefillers_is_used_and_a_request_id_is_made(rig_factory: Any) -> None:
    rig = await rig_factory()
    headers = {"x-prefiller-host-port": f"{rig.prefiller}, 127.0.0.1:9"}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5}
    async with rig.client.post(f"{rig.url}/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["choices"][0]["text"] == "decoded"

    [(path, sent, prefill)] = rig.prefill.received
    assert (path, prefill["max_tokens"], prefill["max_completion_tokens"]) == ("/v1/chat/completions", 1, 1)
    [(_, received, decode)] = rig.decode.received
    assert decode["max_completion_tokens"] == 5 and "max_tokens" not in decode
    assert len(sent["x-request-id"]) == 36 and sent["x-request-id"] == received["x-request-id"]


async def test_without_the_header_everything_passes_through_unchanged(rig_factory: Any) -> None:
    rig = await rig_factory()
    raw = b'{"model": "m",  "prompt": "as sent", "max_tokens": 3}'
    async with rig.client.post(f"{rig.url}/v1/completions?x=1", data=raw) as response:
        assert response.status == 200
    async with rig.client.get(f"{rig.url}/metrics") as response:
        assert response.status == 200

    assert rig.prefill.received == []
    assert [(path, body) for path, _, body in rig.decode.received] == [
        ("/v1/completions?x=1", json.loads(raw)),
        ("/metrics", None),
    ]


async def error_of(rig: Rig, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, Any]:
    headers = {"x-prefiller-host-port": rig.prefiller} if headers is None else headers
    payload = json.dumps(BODY).encode() if data is None else data
    async with rig.client.post(f"{rig.url}/v1/completions", data=payload, headers=headers) as response:
        return response.status, await response.json()


async def test_an_unreachable_prefiller_is_a_502_naming_it(rig_factory: Any) -> None:
    rig = await rig_factory()
    status, body = await error_of(rig, {"x-prefiller-host-port": "127.0.0.1:9"})

    assert status == 502
    assert body["error"]["code"] == "prefill_failed"
    assert body["error"]["message"].startswith("prefill on 127.0.0.1:9 failed: ")
    assert rig.decode.received == []


async def test_a_failing_or_useless_prefill_answer_is_a_502_with_the_reason(rig_factory: Any) -> None:
    async def failing(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"error": {"message": "boom"}}, status=500)

    async def no_params(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"choices": []})

    failed = await rig_factory(prefill=failing)
    assert await error_of(failed) == (502, {"error": {
        "message": f"prefill on {failed.prefiller} failed: answered 500: boom",
        "type": "upstream_error", "param": None, "code": "prefill_failed",
    }})  # fmt: skip
    useless = await rig_factory(prefill=no_params)
    status, body = await error_of(useless)
    assert (status, body["error"]["message"]) == (
        502,
        f"prefill on {useless.prefiller} failed: answer has no kv_transfer_params",
    )
    assert failed.decode.received == useless.decode.received == []


async def test_a_prefill_client_error_is_relayed_as_it_is(rig_factory: Any) -> None:
    async def too_long(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"error": {"message": "prompt too long", "code": 400}}, status=400)

    rig = await rig_factory(prefill=too_long)
    assert await error_of(rig) == (400, {"error": {"message": "prompt too long", "code": 400}})


async def test_a_silent_prefiller_times_out_instead_of_hanging(rig_factory: Any) -> None:
    async def silent(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    rig = await rig_factory(prefill=silent, prefill_timeout=0.3)
    status, body = await asyncio.wait_for(error_of(rig), 5)

    assert (status, body["error"]["code"]) == (502, "prefill_failed")
    assert body["error"]["message"].endswith("TimeoutError") or "timeout" in body["error"]["message"].lower()


async def test_bad_requests_are_refused_before_any_engine_sees_them(rig_factory: Any) -> None:
    rig = await rig_factory(max_body_bytes=1000)

    assert (await error_of(rig, data=b"x" * 2000))[0] == 413
    status, body = await error_of(rig, data=b"[1, 2]")
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    status, body = await error_of(rig, {"x-prefiller-host-port": "no-port-here"})
    assert (status, body["error"]["code"]) == (400, "invalid_prefiller")
    assert rig.prefill.received == rig.decode.received == []


async def test_an_unreachable_decode_engine_is_a_503(rig_factory: Any) -> None:
    rig = await rig_factory()
    await rig.decode.server.close()  # type: ignore[union-attr]
    status, body = await error_of(rig, {})

    assert (status, body["error"]["code"]) == (503, "decoder_unreachable")
