"""`engine`: ask a model server of the pool to tokenize (vLLM's `POST /tokenize`).

    POST http://<endpoint>/tokenize   {"model": <request model>, "prompt": <text>, ...}       completions
                                      {"model": <request model>, "messages": [...], ...}     chat
    200 {"tokens": [<int>, ...], ...}

The server applies its own tokenizer and chat template, so the ids are exactly the ones it will run. The fields
of the request that change the prompt's tokens are forwarded as they are (vLLM's `/tokenize` takes them all):
`add_special_tokens` for completions; for chat also `tools`, `chat_template`, `chat_template_kwargs`,
`add_generation_prompt`, `continue_final_message` and `mm_processor_kwargs` (a request with tools renders them
into the prompt: without them the ids would differ from the engine's).

The candidates are asked in turn, starting one further each request (spreading the calls), until one answers;
a candidate that fails (refused connection, an error status, an answer without a list of integers under
`tokens`) passes to the next. All of it is bounded by `timeout` seconds: then `TokenizeError`.

HTTP goes through one `aiohttp.ClientSession` with kept-alive connections, created at the first call unless one
is given (tests inject theirs), and closed by `close`; a call that starts afterwards fails at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import aiohttp
from yarl import URL

from kvroute.router.framework import ApiKind, Endpoint, LLMRequest
from kvroute.router.plugins.tokenizers.base import (
    PromptTokenizer,
    TokenizeError,
    chat_messages,
    completion_text,
    given_token_ids,
)

TOKENIZE_PATH = "/tokenize"
COMPLETION_FIELDS = ("add_special_tokens",)
CHAT_FIELDS = (
    "tools",
    "chat_template",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "mm_processor_kwargs",
)
KEEPALIVE_TIMEOUT = 4.0  # below uvicorn's 5 s idle timeout, which vLLM serves with


class EngineTokenizer(PromptTokenizer):
    def __init__(self, timeout: float, session: aiohttp.ClientSession | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._timeout = timeout
        self._session = session
        self._owned = session is None
        self._closed = False
        self._turn = itertools.count()

    async def tokenize(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[int]:
        given = given_token_ids(request)
        if given is not None:
            return given
        if not endpoints:
            raise TokenizeError("no endpoint to tokenize with")
        if self._closed:
            raise TokenizeError("the tokenizer is closed")
        body: dict[str, Any] = {"model": request.model}
        forwarded: tuple[str, ...]
        if request.api is ApiKind.CHAT:
            body["messages"] = chat_messages(request)
            forwarded = CHAT_FIELDS
        else:
            body["prompt"] = completion_text(request)
            forwarded = COMPLETION_FIELDS
        for field in forwarded:
            value = request.body.get(field)
            if value is not None:
                body[field] = value
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        first = next(self._turn) % len(endpoints)
        failures: list[str] = []
        for endpoint in itertools.chain(endpoints[first:], endpoints[:first]):
            remaining = deadline - loop.time()
            if remaining <= 0:
                failures.append(f"timed out after {self._timeout}s")
                break
            try:
                return await self._ask(endpoint, body, remaining)
            except TimeoutError:
                failures.append(f"{endpoint.id}: no answer within {self._timeout}s")
                break
            except (aiohttp.ClientError, ValueError) as exc:
                failures.append(f"{endpoint.id}: {exc or type(exc).__name__}")
        raise TokenizeError("tokenizing on the engines failed: " + "; ".join(failures))

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owned:
            await session.close()

    async def _ask(self, endpoint: Endpoint, body: dict[str, Any], timeout: float) -> list[int]:
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_TIMEOUT)
            session = self._session = aiohttp.ClientSession(connector=connector)
        url = URL.build(scheme="http", host=endpoint.address, port=endpoint.port, path=TOKENIZE_PATH)
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                raise ValueError(f"status {response.status}")
            answer = await response.json(content_type=None)
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise ValueError("the answer has no list of token ids under 'tokens'")
        return tokens
