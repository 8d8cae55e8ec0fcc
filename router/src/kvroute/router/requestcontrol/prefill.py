"""The prefill call of a disaggregated request, as vLLM's NIXL connector expects it; the proxy and the sidecar use it.

Prefill request: the client's body with `kv_transfer_params: {"do_remote_decode": true, "do_remote_prefill":
false, "remote_engine_id": null, "remote_block_ids": null, "remote_host": null, "remote_port": null}`,
`max_tokens: 1` (and `max_completion_tokens: 1` when the body has it), `stream: false`, no `stream_options`, and
`cache_hit_threshold: 0` so that the prefill engine never hands it back. Its answer is an ordinary completion
whose `kv_transfer_params` (`do_remote_prefill`, the prefill engine's id, blocks, host and port) tell the decode
engine where to pull the KV cache from. Decode request: the client's body with those `kv_transfer_params`.

`kv_transfer_params` a client sends are never forwarded, by either front door (`client_body`, `client_bytes`):
they tell an engine where to pull KV blocks from, so they are the router's to set, like the routing headers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
from yarl import URL

from kvroute.router.requestcontrol.response import load_json

PREFILLER_HEADER = "x-prefiller-host-port"
TRANSFER_PARAMS = "kv_transfer_params"
MAX_PREFILL_ANSWER_BYTES = 1024 * 1024

# aiohttp would otherwise ask for gzip, and the answer must be read as JSON.
_NO_AUTO_HEADERS = ("Accept-Encoding",)


class PrefillFailed(Exception):
    """The prefill gave no `kv_transfer_params`. `unreachable`: nothing came back (connection refused, reset,
    timeout); otherwise `status` is the prefill engine's answer (200 with an unusable body, or an error) and
    `body` its first bytes."""

    def __init__(self, reason: str, *, unreachable: bool = False, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.unreachable = unreachable
        self.status = status
        self.body = body


def client_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The client's body without the `kv_transfer_params` it may carry."""
    return {k: v for k, v in body.items() if k != TRANSFER_PARAMS}


def client_bytes(body: Mapping[str, Any], raw: bytes) -> bytes:
    """The bytes to forward for the client's parsed `body`: `raw` (its bytes as they came) itself, or re-encoded
    without the `kv_transfer_params` it carried."""
    if TRANSFER_PARAMS not in body:
        return raw
    return dumps(client_body(body))


def prefill_body(body: Mapping[str, Any]) -> dict[str, Any]:
    prefill = {
        **body,
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
    prefill.pop("stream_options", None)
    if "max_completion_tokens" in prefill:
        prefill["max_completion_tokens"] = 1
    return prefill


def decode_body(body: Mapping[str, Any], params: Mapping[str, Any] | None, *, reset_threshold: bool) -> dict[str, Any]:
    """The client's body with the prefill's `kv_transfer_params` (none: the decode engine computes the whole
    prompt); `reset_threshold` sets `cache_hit_threshold: 0` so that the engine cannot hand the request back."""
    decode = client_body(body)
    if reset_threshold:
        decode["cache_hit_threshold"] = 0
    if params is not None:
        decode[TRANSFER_PARAMS] = dict(params)
    return decode


def dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


async def prefill(
    session: aiohttp.ClientSession,
    url: URL | str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    timeout: aiohttp.ClientTimeout | None = None,
) -> dict[str, Any]:
    """Sends the prefill request for the client's `body` to `url`; the `kv_transfer_params` for the decode.
    Raises `PrefillFailed`. `timeout` bounds this request (default: the session's)."""
    options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    try:
        async with session.post(
            url, data=dumps(prefill_body(body)), headers=headers, skip_auto_headers=_NO_AUTO_HEADERS, **options
        ) as response:
            answer = await _read_bounded(response, MAX_PREFILL_ANSWER_BYTES)
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PrefillFailed(str(exc) or type(exc).__name__, unreachable=True) from None
    if answer is None:
        raise PrefillFailed(f"answer longer than {MAX_PREFILL_ANSWER_BYTES} bytes", status=status)
    message = load_json(answer)
    if status != 200:
        raise PrefillFailed(_status_reason(status, message), status=status, body=answer[:4096])
    params = message.get("kv_transfer_params") if isinstance(message, dict) else None
    if not isinstance(params, dict):
        raise PrefillFailed("answer has no kv_transfer_params", status=status)
    return params


def _status_reason(status: int, message: Any) -> str:
    """`answered <status>`, with the error message of an OpenAI-style error body."""
    error = message.get("error") if isinstance(message, dict) else None
    text = error.get("message") if isinstance(error, dict) else None
    return f"answered {status}: {text}" if isinstance(text, str) and text else f"answered {status}"


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None when it is longer than `limit`."""
    body = bytearray()
    while chunk := await response.content.readany():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
