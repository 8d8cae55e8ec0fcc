"""The `engine` tokenizer against scriptable `/tokenize` servers on 127.0.11.x."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from kvroute.router.framework import ApiKind, Endpoint, LLMRequest
from kvroute.router.plugins.tokenizers import EngineTokenizer, TokenizeError

_HOSTS = itertools.cycle(f"127.0.11.{i}" for i in range(1, 255))

Answer = Callable[[dict[str, Any]], Awaitable[web.StreamResponse]]


async def tokens_of_length(body: dict[str, Any]) -> web.StreamResponse:
    text = body.get("prompt") or "".join(m["content"] for m in body["messages"])
    return web.json_response({"count": len(text), "tokens": [ord(c) for c in text], "max_model_len": 100})


class TokenizeServer:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.received: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.endpoint = Endpoint.create(next(_HOSTS), 0)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/tokenize", self._tokenize)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.endpoint.address, 0).start()
        self.endpoint = Endpoint.create(self.endpoint.address, self.runner.addresses[0][1])

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(body)
        return await self.answer(body)


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[Answer], Awaitable[TokenizeServer]]]:
    started: list[TokenizeServer] = []

    async def start(answer: Answer) -> TokenizeServer:
        server = TokenizeServer(answer)
        await server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            if server.runner is not None:
                await server.runner.cleanup()


@pytest.fixture
async def tokenizer() -> AsyncIterator[EngineTokenizer]:
    engine = EngineTokenizer(timeout=5.0)
    try:
        yield engine
    finally:
        await engine.close()


def request(api: ApiKind, **body: Any) -> LLMRequest:
    return LLMRequest("r", "org/m", api, "", {"model": "org/m", **body}, {})


async def test_completions_and_chat_are_sent_as_vllm_expects(servers: Any, tokenizer: EngineTokenizer) -> None:
    server = await servers(tokens_of_length)
    messages = [{"role": "user", "content": "hey"}]

    assert await tokenizer.tokenize(request(ApiKind.COMPLETIONS, prompt="abc"), [server.endpoint]) == [97, 98, 99]
    assert await tokenizer.tokenize(request(ApiKind.CHAT, messages=messages), [server.endpoint]) == [104, 101, 121]
    assert server.received == [{"model": "org/m", "prompt": "abc"}, {"model": "org/m", "messages": messages}]


async def test_the_fields_that_change_the_tokens_are_forwarded(servers: Any, tokenizer: EngineTokenizer) -> None:
    server = await servers(tokens_of_length)
    messages = [{"role": "user", "content": "weather?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    chat_fields = {
        "tools": tools,
        "chat_template_kwargs": {"enable_thinking": False},
        "add_generation_prompt": False,
        "continue_final_message": True,
        "add_special_tokens": True,
    }

    await tokenizer.tokenize(
        request(ApiKind.CHAT, messages=messages, max_tokens=5, stream=True, **chat_fields), [server.endpoint]
    )
    await tokenizer.tokenize(
        request(ApiKind.COMPLETIONS, prompt="abc", add_special_tokens=False, tools=tools), [server.endpoint]
    )

    assert server.received == [
        {"model": "org/m", "messages": messages, **chat_fields},
        {"model": "org/m", "prompt": "abc", "add_special_tokens": False},
    ]


async def test_prompt_token_ids_need_no_call(servers: Any, tokenizer: EngineTokenizer) -> None:
    server = await servers(tokens_of_length)

    assert await tokenizer.tokenize(request(ApiKind.COMPLETIONS, prompt=[4, 5]), [server.endpoint]) == [4, 5]
    assert server.received == []
    assert tokenizer.tokenize_now(request(ApiKind.COMPLETIONS, prompt="abc")) is None


async def test_a_failing_candidate_passes_to_the_next_and_calls_rotate(
    servers: Any, tokenizer: EngineTokenizer
) -> None:
    async def broken(body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"error": "boom"}, status=500)

    async def no_tokens(body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"tokens": ["a"]})

    bad, wrong, good = await servers(broken), await servers(no_tokens), await servers(tokens_of_length)
    candidates = [bad.endpoint, wrong.endpoint, good.endpoint]

    for _ in range(3):
        assert await tokenizer.tokenize(request(ApiKind.COMPLETIONS, prompt="xy"), candidates) == [120, 121]
    # Each call started one candidate further: bad first, then wrong, then good.
    assert (len(bad.received), len(wrong.received), len(good.received)) == (1, 2, 3)


async def test_every_candidate_failing_is_a_tokenize_error_naming_them(
    servers: Any, tokenizer: EngineTokenizer
) -> None:
    async def broken(body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"error": "boom"}, status=503)

    server = await servers(broken)
    dead = Endpoint.create(next(_HOSTS), 9)

    with pytest.raises(TokenizeError, match=rf"{server.endpoint.id}: status 503; {dead.id}: "):
        await tokenizer.tokenize(request(ApiKind.COMPLETIONS, prompt="x"), [server.endpoint, dead])
    with pytest.raises(TokenizeError, match="no endpoint"):
        await tokenizer.tokenize(request(ApiKind.COMPLETIONS, prompt="x"), [])


async def test_the_timeout_bounds_the_whole_call(servers: Any) -> None:
    async def hang(body: dict[str, Any]) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.json_response({"tokens": []})

    server = await servers(hang)
    tokenizer = EngineTokenizer(timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(TokenizeError, match=r"no answer within 0\.3s"):
            await tokenizer.tokenize(request(ApiKind.COMPLETIONS, prompt="x"), [server.endpoint, server.endpoint])
    finally:
        await tokenizer.close()
    assert time.monotonic() - started < 5.0  # 0.3 s, with a wide margin for a loaded machine


async def test_a_closed_tokenizer_makes_no_more_calls(servers: Any) -> None:
    server = await servers(tokens_of_length)
    tokenizer = EngineTokenizer(timeout=5.0)
    assert await tokenizer.tokenize(request(ApiKind.COMPLETIONS, prompt="a"), [server.endpoint]) == [97]

    await tokenizer.close()

    with pytest.raises(TokenizeError, match="closed"):
        await tokenizer.tokenize(request(ApiKind.COMPLETIONS, prompt="a"), [server.endpoint])
    assert len(server.received) == 1
