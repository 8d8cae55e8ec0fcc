"""An open-loop HTTP load generator for OpenAI-compatible servers, measuring what users feel.

Each request streams (`stream: true` with usage included); TTFT is the time from sending the request to the
first chunk carrying text, e2e the time to the end of the stream. The server that answered is read from the
`x-inference-pod` response header and the cached prompt tokens from the final usage chunk.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True)
class PlannedRequest:
    at: float  # seconds after the start of the run
    body: dict[str, Any]
    path: str = "/v1/completions"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    status: int
    ttft: float | None = None
    e2e: float | None = None
    pod: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


async def send(session: aiohttp.ClientSession, base_url: str, planned: PlannedRequest, timeout: float) -> Outcome:
    body = {**planned.body, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    outcome = Outcome(status=0)
    try:
        async with session.post(
            base_url + planned.path, json=body, headers=planned.headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            outcome.status = response.status
            outcome.pod = response.headers.get("x-inference-pod")
            if response.status != 200:
                outcome.error = (await response.text())[:200]
                return outcome
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                choices = chunk.get("choices") or []
                if outcome.ttft is None and any(_chunk_text(c) for c in choices):
                    outcome.ttft = time.perf_counter() - started
                usage = chunk.get("usage")
                if usage:
                    outcome.prompt_tokens = usage.get("prompt_tokens", 0)
                    outcome.output_tokens = usage.get("completion_tokens", 0)
                    details = usage.get("prompt_tokens_details") or {}
                    outcome.cached_tokens = details.get("cached_tokens") or 0
            outcome.e2e = time.perf_counter() - started
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    return outcome


def _chunk_text(choice: dict[str, Any]) -> str:
    return str(choice.get("text") or (choice.get("delta") or {}).get("content") or "")


async def run_open_loop(
    base_url: str,
    plan: Sequence[PlannedRequest],
    *,
    timeout: float = 60.0,
    on_done: Callable[[Outcome], object] | None = None,
) -> list[Outcome]:
    """Send every planned request at its time (open loop: a slow server does not slow the arrivals)."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()

        async def one(planned: PlannedRequest) -> Outcome:
            delay = planned.at - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            outcome = await send(session, base_url, planned, timeout)
            if on_done is not None:
                on_done(outcome)
            return outcome

        return list(await asyncio.gather(*(one(p) for p in plan)))
