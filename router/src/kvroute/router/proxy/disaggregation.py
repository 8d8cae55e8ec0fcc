"""Opening the upstream response for a request, executing a P/D decision on the way (the proxy has no sidecar).

Without a `DisaggregationPlan` in the request's `CycleState` (see `plugins.handlers.pd`) the client's body bytes
go as they are to the scheduled endpoints, primary first. With one:

- `prefill-first`: a prefill request goes to the plan's prefill endpoint (the client's body with
  `kv_transfer_params: {"do_remote_decode": true, ...}`, `max_tokens: 1`, `stream: false`); the decode request then
  goes to the decode endpoints with the `kv_transfer_params` the prefill answered (`do_remote_prefill`, the
  prefill engine's address and blocks).
- `decode-first`: the decode request goes first, with the plan's `cache_hit_threshold`. When the endpoint hands
  it back (`finish_reason: "cache_threshold"`: the first event with content of a stream, or the JSON answer),
  the prefill runs, then the decode is sent again to the same endpoint. Otherwise its answer goes to the client.

Prefill and re-sent decode requests carry `cache_hit_threshold: 0`, so neither can hand back again. A prefill
that fails (unreachable, an error status, no `kv_transfer_params` in the answer) is logged and the decode runs
without it: the decode endpoint then computes the whole prompt itself. Only the decode answer reaches the
response hooks; the in-flight gauge counts the decode endpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from kvroute.router.framework import Endpoint
from kvroute.router.plugins.handlers.pd import DISAGGREGATION, DisaggregationPlan
from kvroute.router.proxy.sse import peek_finish_reason
from kvroute.router.proxy.upstream import Upstream, request_headers
from kvroute.router.requestcontrol.handle import RequestHandle
from kvroute.router.requestcontrol.response import finish_reason_of, load_json

log = logging.getLogger(__name__)

CACHE_THRESHOLD = "cache_threshold"
MAX_PREFILL_ANSWER_BYTES = 1024 * 1024


@dataclass
class Opened:
    """The upstream answer to send to the client; `head` holds body bytes already read from it, to send first."""

    endpoint: Endpoint
    response: aiohttp.ClientResponse
    head: list[bytes] = field(default_factory=list)


async def open_upstream(upstream: Upstream, handle: RequestHandle, path: str) -> Opened:
    """Raises `Unreachable` when no decode endpoint answers."""
    headers = request_headers(handle.upstream_headers())
    plan = handle.state.read(DISAGGREGATION)
    if plan is None:
        endpoint, response = await upstream.open(handle, handle.endpoints, path, handle.raw_body, headers)
        return Opened(endpoint, response)
    if plan.mode == "decode-first":
        return await _decode_first(upstream, handle, plan, path, headers)
    params = await _prefill(upstream, handle, plan, path, headers)
    reset = "cache_hit_threshold" in handle.request.body
    body = handle.raw_body if params is None else _decode_body(handle, params, reset_threshold=reset)
    endpoint, response = await upstream.open(handle, handle.endpoints, path, body, headers)
    return Opened(endpoint, response)


async def _decode_first(
    upstream: Upstream, handle: RequestHandle, plan: DisaggregationPlan, path: str, headers: dict[str, str]
) -> Opened:
    first = _dumps({**handle.request.body, "cache_hit_threshold": plan.cache_hit_threshold})
    endpoint, response = await upstream.open(handle, handle.endpoints, path, first, headers)
    if response.status != 200:
        return Opened(endpoint, response)
    try:
        if handle.request.stream:
            reason, head = await peek_finish_reason(response)
        else:
            body = await response.read()
            reason, head = finish_reason_of(load_json(body)), [body]
    except BaseException:
        response.close()
        raise
    if reason != CACHE_THRESHOLD:
        return Opened(endpoint, response, head)
    response.close()
    params = await _prefill(upstream, handle, plan, path, headers)
    second = _decode_body(handle, params, reset_threshold=True)
    fallbacks = [endpoint, *(e for e in handle.endpoints if e.id != endpoint.id)]
    endpoint, response = await upstream.open(handle, fallbacks, path, second, headers)
    return Opened(endpoint, response)


async def _prefill(
    upstream: Upstream, handle: RequestHandle, plan: DisaggregationPlan, path: str, headers: dict[str, str]
) -> dict[str, Any] | None:
    """Runs the prefill on the plan's prefill endpoint; the `kv_transfer_params` for the decode, or None."""
    body = {
        **handle.request.body,
        "kv_transfer_params": {
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        },
        "max_tokens": 1,
        "stream": False,
        "cache_hit_threshold": 0,
    }
    body.pop("stream_options", None)
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = 1
    request_id = handle.request.request_id
    prefill = plan.prefill
    try:
        async with await upstream.post(prefill, path, _dumps(body), headers) as response:
            if response.status != 200:
                log.warning("prefill of request %s on %s answered %d", request_id, prefill.id, response.status)
                return None
            answer = await _read_bounded(response, MAX_PREFILL_ANSWER_BYTES)
    except (aiohttp.ClientError, TimeoutError) as exc:
        handle.on_unreachable(prefill, f"prefill failed: {exc or type(exc).__name__}")
        return None
    message = load_json(answer) if answer is not None else None
    params = message.get("kv_transfer_params") if isinstance(message, dict) else None
    if not isinstance(params, dict):
        log.warning("prefill of request %s on %s returned no kv_transfer_params", request_id, prefill.id)
        return None
    return params


def _decode_body(handle: RequestHandle, params: dict[str, Any] | None, *, reset_threshold: bool) -> bytes:
    body = dict(handle.request.body)
    if reset_threshold:
        body["cache_hit_threshold"] = 0
    if params is not None:
        body["kv_transfer_params"] = params
    return _dumps(body)


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None when it is longer than `limit`."""
    body = bytearray()
    while chunk := await response.content.readany():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
