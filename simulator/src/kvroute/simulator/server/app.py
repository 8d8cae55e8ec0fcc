"""The aiohttp application: routes, JSON errors for every failure, identity headers, engine lifecycle.

Routes: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`,
`POST /tokenize`, `POST /v1/completions/render`, `POST /v1/chat/completions/render`, `GET /metrics`. The render
routes answer with the prompt token ids that a generation request with the same body would run (completions: a
list with one entry; chat: one object), without generating; routers that place requests by token ids ask every
server for them. Any error (a bad body, an unknown path or method, an oversized body, an injected failure) is
answered with vLLM's JSON error body; every response carries `x-inference-pod` and `x-inference-namespace`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.engine.kv_events import KVEvent
from kvroute.simulator.kv_publisher import KVEventPublisher
from kvroute.simulator.server.config import ServerConfig
from kvroute.simulator.server.driver import EngineDriver
from kvroute.simulator.server.errors import APIError
from kvroute.simulator.server.faults import FailureInjector
from kvroute.simulator.server.generation import GenerationService
from kvroute.simulator.server.metrics import CONTENT_TYPE, ServerMetrics
from kvroute.simulator.server.protocol import (
    GenerationRequest,
    ModelCatalog,
    decode_json_body,
    parse_chat,
    parse_completion,
    parse_tokenize,
)
from kvroute.simulator.server.responses import model_list
from kvroute.simulator.tokenizer import Tokenizer

log = logging.getLogger(__name__)

POD_HEADER = "x-inference-pod"
NAMESPACE_HEADER = "x-inference-namespace"

# Requests in flight at SIGTERM get this long to finish before their connections are closed.
SHUTDOWN_GRACE_S = 5.0

Parser = Callable[..., GenerationRequest]


@dataclass
class ServerContext:
    config: ServerConfig
    engine: Engine  # rank 0's
    driver: EngineDriver  # rank 0's
    drivers: list[EngineDriver]  # one per data-parallel rank
    metrics: ServerMetrics
    catalog: ModelCatalog
    tokenizer: Tokenizer
    faults: FailureInjector
    generation: GenerationService
    started: int


CONTEXT = web.AppKey("kvroute_simulator", ServerContext)


def build_app(config: ServerConfig) -> web.Application:
    engines = [
        Engine(
            config.profile,
            engine_id=config.pod if rank == 0 else f"{config.pod}/dp{rank}",
            global_cache_hit_threshold=config.global_cache_hit_threshold,
            record_kv_events=config.kv_events_endpoint is not None,
        )
        for rank in range(config.data_parallel_size)
    ]
    metrics = ServerMetrics(engines, config.served_model_name)
    drivers = [
        EngineDriver(engine, time_scale=config.time_scale, observer=metrics.observer(rank))
        for rank, engine in enumerate(engines)
    ]
    tokenizer = Tokenizer()
    context = ServerContext(
        config=config,
        engine=engines[0],
        driver=drivers[0],
        drivers=drivers,
        metrics=metrics,
        catalog=ModelCatalog(config.model_names, config.lora_modules, config.profile.max_model_len),
        tokenizer=tokenizer,
        # A stream of its own, so injected failures do not shift the output texts drawn from `seed`.
        faults=FailureInjector(
            config.failure_injection_rate, config.failure_types, random.Random(f"faults/{config.seed}")
        ),
        generation=GenerationService(config, drivers, tokenizer),
        started=int(time.time()),
    )
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[_json_errors])
    app[CONTEXT] = context
    app.on_response_prepare.append(_identity_headers)
    app.cleanup_ctx.append(_engine_lifecycle)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_post("/tokenize", _tokenize)
    app.router.add_post("/v1/completions/render", _render_completion)
    app.router.add_post("/v1/chat/completions/render", _render_chat)
    app.router.add_get("/metrics", _metrics)
    return app


async def serve(config: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM."""
    runner = web.AppRunner(
        build_app(config), handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("serving %s on http://%s:%d", config.served_model_name, config.host, config.port)
        await stop.wait()
    finally:
        await runner.cleanup()


async def _engine_lifecycle(app: web.Application) -> AsyncIterator[None]:
    context = app[CONTEXT]
    config = context.config
    publishers: list[KVEventPublisher] = []
    try:
        if config.kv_events_endpoint is not None:
            for rank, driver in enumerate(context.drivers):
                publisher = KVEventPublisher(
                    config.kv_events_endpoint,
                    config.kv_events_topic,
                    bind=not config.kv_events_connect,
                    map_format=config.kv_events_map_format,
                    lora_ids={name: index for index, name in enumerate(context.catalog.loras, start=1)},
                    data_parallel_rank=rank,
                    groups=config.kv_cache_groups,
                )
                publishers.append(publisher)
                driver.on_kv_events = functools.partial(_publish, publisher)
        for driver in context.drivers:
            driver.start()
        yield
    finally:
        for driver in context.drivers:
            await driver.stop()
        for publisher in publishers:
            publisher.close()


def _publish(publisher: KVEventPublisher, events: list[KVEvent]) -> None:
    publisher.publish(events, time.time())


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = exc.headers.get("Allow")
        return APIError(
            exc.status, _http_error_message(request, exc), headers={"Allow": allow} if allow else None
        ).response()
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.rel_url.path[:200])
        return APIError(500, "Internal server error.").response()


def _http_error_message(request: web.Request, exc: web.HTTPException) -> str:
    path = request.rel_url.path[:200]
    if exc.status == 404:
        return f"Not Found: no route for {path}"
    if exc.status == 405:
        return f"Method Not Allowed: {request.method} is not allowed for {path}"
    if exc.status == 413:
        return f"Request Entity Too Large: the body exceeds {request.app[CONTEXT].config.max_body_bytes} bytes"
    return exc.reason


async def _identity_headers(request: web.Request, response: web.StreamResponse) -> None:
    config = request.app[CONTEXT].config
    response.headers[POD_HEADER] = config.pod
    response.headers[NAMESPACE_HEADER] = config.namespace


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, parse_completion)


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, parse_chat)


async def _generate(request: web.Request, parse: Parser) -> web.StreamResponse:
    context = request.app[CONTEXT]
    injected = context.faults.check(request.headers)
    if injected is not None:
        raise injected
    body = decode_json_body(await request.read())
    parsed = parse(body, context.catalog, context.tokenizer, default_max_tokens=context.config.default_max_tokens)
    return await context.generation.serve(request, parsed)


async def _models(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    return _json(model_list(context.catalog, context.config.model, context.started))


async def _health(request: web.Request) -> web.Response:
    if any(driver.failure is not None for driver in request.app[CONTEXT].drivers):
        raise APIError(503, "The engine stopped after an internal error.")
    return web.Response()


async def _tokenize(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    tokens = parse_tokenize(decode_json_body(await request.read()), context.catalog, context.tokenizer)
    return _json(
        {"count": len(tokens), "max_model_len": context.catalog.max_model_len, "tokens": tokens, "token_strs": None}
    )


async def _render_completion(request: web.Request) -> web.Response:
    return _json([await _render(request, parse_completion)])


async def _render_chat(request: web.Request) -> web.Response:
    return _json(await _render(request, parse_chat))


async def _render(request: web.Request, parse: Parser) -> dict[str, Any]:
    context = request.app[CONTEXT]
    body = decode_json_body(await request.read())
    parsed = parse(body, context.catalog, context.tokenizer, default_max_tokens=context.config.default_max_tokens)
    return {
        "model": parsed.model,
        "token_ids": parsed.prompt_token_ids,
        "sampling_params": {"max_tokens": parsed.max_tokens},
    }


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[CONTEXT].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _json(body: dict[str, Any] | list[Any]) -> web.Response:
    return web.Response(text=json.dumps(body), content_type="application/json")
