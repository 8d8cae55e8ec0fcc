"""Serving one completion or chat request: submit it to the engine driver, answer as JSON or as SSE chunks.

The request is released from the driver however the handler ends: normally, on a client disconnect (the
handler is cancelled, or a write fails) or on an error, so an abandoned request is aborted in the engine and no
per-request state outlives its handler.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from kvroute.simulator.engine.request import EngineRequest, RequestOutput
from kvroute.simulator.server.config import ServerConfig
from kvroute.simulator.server.driver import EngineDriver, EngineFailed, RequestStream
from kvroute.simulator.server.errors import APIError, bad_request
from kvroute.simulator.server.protocol import GenerationRequest
from kvroute.simulator.server.responses import SSE_DONE, ResponseRenderer, sse, usage
from kvroute.simulator.tokenizer import Tokenizer


def _engine_failed() -> APIError:
    return APIError(500, "The engine stopped after an internal error.")


RANK_HEADER = "X-data-parallel-rank"  # vLLM's: pins a request to one data-parallel engine


class GenerationService:
    def __init__(self, config: ServerConfig, drivers: Sequence[EngineDriver], tokenizer: Tokenizer) -> None:
        self._config = config
        self._drivers = tuple(drivers)
        self._tokenizer = tokenizer
        self._rng = random.Random(config.seed)

    def _driver_for(self, http_request: web.Request) -> EngineDriver:
        """The rank named by the request's `X-data-parallel-rank`, else the least loaded (4 x waiting + running,
        as vLLM's own data-parallel balancing weighs them), the lowest rank on a tie."""
        drivers = self._drivers
        if len(drivers) == 1:
            return drivers[0]
        named = http_request.headers.get(RANK_HEADER)
        if named is not None:
            if not named.isdigit() or int(named) >= len(drivers):
                raise bad_request(f"{RANK_HEADER} must be a rank below {len(drivers)}, not {named!r}", None)
            return drivers[int(named)]
        return min(drivers, key=lambda d: 4 * d.engine.num_waiting + d.engine.num_running)

    async def serve(self, http_request: web.Request, request: GenerationRequest) -> web.StreamResponse:
        request_id = f"{'chatcmpl' if request.chat else 'cmpl'}-{uuid.uuid4().hex}"
        engine_request = EngineRequest(
            request_id=request_id,
            prompt_token_ids=request.prompt_token_ids,
            max_tokens=request.max_tokens,
            lora_name=request.lora_name,
            cache_hit_threshold=request.cache_hit_threshold,
            kv_transfer_params=self._accepted_transfer_params(request.kv_transfer_params),
        )
        driver = self._driver_for(http_request)
        try:
            stream = driver.submit(engine_request)
        except ValueError as exc:
            raise bad_request(str(exc), "prompt") from None
        except EngineFailed:
            raise _engine_failed() from None
        renderer = ResponseRenderer(
            chat=request.chat, request_id=request_id, model=request.model, created=int(time.time())
        )
        seed = request.seed if request.seed is not None else self._rng.getrandbits(32)
        try:
            if request.stream:
                return await self._stream(http_request, request, stream, renderer, seed)
            return await self._collect(stream, renderer, seed)
        finally:
            driver.release(stream)

    def _accepted_transfer_params(self, params: dict[str, Any] | None) -> dict[str, Any] | None:
        """A prefill-role server never pulls KV from a peer, a decode-role server never hands it off."""
        if params is None:
            return None
        role = self._config.role
        if role == "prefill":
            return {k: v for k, v in params.items() if k != "do_remote_prefill"}
        if role == "decode":
            return {k: v for k, v in params.items() if k != "do_remote_decode"}
        return params

    def _returned_transfer_params(self, output: RequestOutput) -> dict[str, Any] | None:
        if output.kv_transfer_params is None:
            return None
        host, port = self._config.host, self._config.port
        return {**output.kv_transfer_params, "remote_host": host, "remote_port": port}

    def _text(self, seed: int, output: RequestOutput) -> str:
        return self._tokenizer.output_text(seed, output.num_output_tokens - 1) if output.new_tokens else ""

    async def _collect(self, stream: RequestStream, renderer: ResponseRenderer, seed: int) -> web.Response:
        pieces: list[str] = []
        last: RequestOutput | None = None
        try:
            async for output, _at in stream:
                pieces.append(self._text(seed, output))
                last = output
        except EngineFailed:
            raise _engine_failed() from None
        assert last is not None and last.finish_reason is not None
        body = renderer.full(
            "".join(pieces),
            last.finish_reason.value,
            _usage(last),
            self._returned_transfer_params(last),
        )
        return web.Response(text=json.dumps(body), content_type="application/json")

    async def _stream(
        self,
        http_request: web.Request,
        request: GenerationRequest,
        stream: RequestStream,
        renderer: ResponseRenderer,
        seed: int,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(http_request)
        opened = False
        try:
            try:
                async for output, _at in stream:
                    if renderer.chat and not opened:
                        await response.write(sse(renderer.role_chunk()))
                        opened = True
                    reason = output.finish_reason.value if output.finish_reason is not None else None
                    chunk = renderer.chunk(self._text(seed, output), reason, self._returned_transfer_params(output))
                    await response.write(sse(chunk))
                    if output.finished and request.include_usage:
                        await response.write(sse(renderer.usage_chunk(_usage(output))))
            except EngineFailed:
                await response.write(sse(_engine_failed().body()))
            await response.write(SSE_DONE)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; `serve` releases (aborts) the request
        return response


def _usage(output: RequestOutput) -> dict[str, Any]:
    return usage(output.num_prompt_tokens, output.num_output_tokens, output.num_cached_tokens)
