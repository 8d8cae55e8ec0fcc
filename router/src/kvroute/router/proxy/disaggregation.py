"""Opening the upstream response for a request, executing its P/D plan on the way (the proxy has no sidecar).

Without a `DisaggregationPlan` in the scheduling result the client's body bytes go as they are to the scheduled
endpoints, primary first, unless they carry `kv_transfer_params`: those are removed from every body the proxy
sends (`prefill.client_body`), so that only the router's own reach an engine. With a plan:

- `prefill-first`: the prefill request (`requestcontrol.prefill`) goes to the plan's prefill endpoint; the decode
  request then goes to the decode endpoints with the `kv_transfer_params` the prefill answered
  (`do_remote_prefill`, the prefill engine's address and blocks).
- `decode-first`: the decode request goes first, with the plan's `cache_hit_threshold`. When the endpoint hands
  it back (`finish_reason: "cache_threshold"`: the first event with content of a stream, or the JSON answer),
  the prefill runs, then the decode is sent again to the same endpoint. Otherwise its answer goes to the client.

Prefill and re-sent decode requests carry `cache_hit_threshold: 0`, so neither can hand back again. A prefill
that fails (unreachable, an error status, no `kv_transfer_params` in the answer) is logged and the decode runs
without it: the decode endpoint then computes the whole prompt itself. Only the decode answer reaches the
response hooks; the in-flight gauge counts the decode endpoint. The proxy never sends `x-prefiller-host-port`:
it runs the prefill itself, and a sidecar in front of the decode engine would run it a second time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kvroute.router.framework import DisaggregationPlan, Endpoint
from kvroute.router.proxy.client import UpstreamResponse
from kvroute.router.proxy.sse import peek_finish_reason
from kvroute.router.proxy.upstream import Upstream, request_headers
from kvroute.router.requestcontrol import prefill
from kvroute.router.requestcontrol.handle import RequestHandle
from kvroute.router.requestcontrol.response import finish_reason_of, load_json

log = logging.getLogger(__name__)

CACHE_THRESHOLD = "cache_threshold"


@dataclass
class Opened:
    """The upstream answer to send to the client; `head` holds body bytes already read from it, to send first."""

    endpoint: Endpoint
    response: UpstreamResponse
    head: list[bytes] = field(default_factory=list)


async def open_upstream(upstream: Upstream, handle: RequestHandle, path: str) -> Opened:
    """Raises `Unreachable` when no decode endpoint answers."""
    headers = request_headers(handle.upstream_headers())
    plan = handle.result.disaggregation
    if plan is None:
        endpoint, response = await upstream.open(handle, handle.endpoints, path, _client_bytes(handle), headers)
        return Opened(endpoint, response)
    if plan.mode == "decode-first":
        return await _decode_first(upstream, handle, plan, path, headers)
    params = await _prefill(upstream, handle, plan, path, headers)
    reset = "cache_hit_threshold" in handle.request.body
    body = _client_bytes(handle) if params is None else _decode_body(handle, params, reset_threshold=reset)
    endpoint, response = await upstream.open(handle, handle.endpoints, path, body, headers)
    return Opened(endpoint, response)


async def _decode_first(
    upstream: Upstream, handle: RequestHandle, plan: DisaggregationPlan, path: str, headers: dict[str, str]
) -> Opened:
    first = prefill.dumps({**prefill.client_body(handle.request.body), "cache_hit_threshold": plan.cache_hit_threshold})
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
    target = plan.prefill
    try:
        return await prefill.prefill(upstream.session, upstream.url(target, path), handle.request.body, headers)
    except prefill.PrefillFailed as failed:
        if failed.unreachable:
            handle.on_unreachable(target, f"prefill failed: {failed.reason}")
        else:
            log.warning("prefill of request %s on %s: %s", handle.request.request_id, target.id, failed.reason)
        return None


def _client_bytes(handle: RequestHandle) -> bytes:
    return prefill.client_bytes(handle.request.body, handle.raw_body)


def _decode_body(handle: RequestHandle, params: dict[str, Any] | None, *, reset_threshold: bool) -> bytes:
    return prefill.dumps(prefill.decode_body(handle.request.body, params, reset_threshold=reset_threshold))
