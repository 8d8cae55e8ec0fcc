"""Server-sent events as the proxy handles them: looking at the start of a stream before passing it on, and the
error event that ends a stream the upstream broke off.

Decode-first P/D must know whether the decode endpoint handed the request back (`finish_reason:
"cache_threshold"`) before the client sees anything. The answer is in the first event that carries text or a
finish reason; events before it (a chat stream opens with an empty assistant-role delta) are held back with it
and sent on unchanged if the stream goes ahead.
"""

from __future__ import annotations

import json

from kvroute.router.proxy.client import UpstreamResponse
from kvroute.router.requestcontrol.response import SSEBuffer, chunk_tokens, finish_reason_of, load_json

PEEK_LIMIT_BYTES = 256 * 1024
_DONE = b"[DONE]"


async def peek_finish_reason(response: UpstreamResponse) -> tuple[str | None, list[bytes]]:
    """Reads `response` up to its first event with text or a finish reason (or an error event, `[DONE]`, the end
    of the body, `PEEK_LIMIT_BYTES`); returns that event's finish reason (None when there is none) and the chunks
    read, which the caller sends on before the rest of the stream."""
    buffer = SSEBuffer(PEEK_LIMIT_BYTES)
    chunks: list[bytes] = []
    while True:
        chunk = await response.content.readany()
        if not chunk:
            return None, chunks
        chunks.append(chunk)
        for payload in buffer.feed(chunk):
            if payload == _DONE:
                return None, chunks
            message = load_json(payload)
            reason = finish_reason_of(message)
            if reason is not None:
                return reason, chunks
            if chunk_tokens(message) or (isinstance(message, dict) and "error" in message):
                return None, chunks
        if buffer.overflowed:
            return None, chunks


def error_event(message: str, code: str) -> bytes:
    """An OpenAI-style error as one SSE event (the `openai` client raises it as an `APIError`)."""
    error = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"data: " + json.dumps(error).encode() + b"\n\n"
