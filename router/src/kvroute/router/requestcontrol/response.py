"""What the router reads out of a model server's response body as it passes through: output tokens, usage and
the finish reason.

Two body kinds, told apart by the response's `Content-Type`:

- `text/event-stream` (a streamed completion): the body is split into server-sent events; each `data:` payload
  other than `[DONE]` is parsed as JSON. Every choice carrying text (`choices[i].text`, or
  `choices[i].delta.content` for chat) counts as one output token, which is exact for vLLM-style streams (one
  token per event). A `usage` object, when the stream has one (`stream_options.include_usage`), is authoritative:
  `completion_tokens` replaces the count.
- anything else: the body is buffered (up to `MAX_BUFFERED_BYTES`) and parsed as JSON once complete, i.e. when
  `Content-Length` bytes arrived or the response ended; `usage.completion_tokens` is the output count.

`usage.prompt_tokens` and `usage.prompt_tokens_details.cached_tokens` are recorded when present. A body that is not
what it claims to be is not an error: the counts just stay as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kvroute.router.framework import ResponseInfo

EVENT_STREAM = "text/event-stream"
MAX_BUFFERED_BYTES = 4 * 1024 * 1024
_DONE = b"[DONE]"


class SSEBuffer:
    """Splits a byte stream into the `data:` payloads of complete server-sent events. An incomplete event is kept
    until the rest arrives, up to `limit` bytes (beyond that the buffer gives up and returns nothing more)."""

    __slots__ = ("_limit", "_pending", "overflowed")

    def __init__(self, limit: int = MAX_BUFFERED_BYTES) -> None:
        self._pending = b""
        self._limit = limit
        self.overflowed = False

    def feed(self, data: bytes) -> list[bytes]:
        if self.overflowed:
            return []
        if self._pending:
            data = self._pending + data
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            if len(data) > self._limit:
                self.overflowed, self._pending = True, b""
            return []
        self._pending = data[end + 2 :]
        payloads: list[bytes] = []
        for event in data[:end].split(b"\n\n"):
            payload = _data_of(event)
            if payload is not None:
                payloads.append(payload)
        return payloads


def _data_of(event: bytes) -> bytes | None:
    """The data of one event (several `data:` lines joined by newlines); None for an event without data."""
    if event.startswith(b"data:") and b"\n" not in event:
        return event[6:] if event.startswith(b"data: ") else event[5:]
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def load_json(payload: bytes | bytearray) -> Any:
    """The parsed payload, or None when it is not JSON."""
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


def finish_reason_of(message: Any) -> str | None:
    """The first non-null `finish_reason` among a response's (or chunk's) choices."""
    if not isinstance(message, dict):
        return None
    choices = message.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict):
                reason = choice.get("finish_reason")
                if isinstance(reason, str):
                    return reason
    return None


def chunk_tokens(message: Any) -> int:
    """Output tokens carried by one streamed chunk: one per choice with text."""
    if not isinstance(message, dict):
        return 0
    choices = message.get("choices")
    if not isinstance(choices, list):
        return 0
    tokens = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        text = choice.get("text")
        if text is None:
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(text, str) and text:
            tokens += 1
    return tokens


class ResponseReader:
    """Keeps `info` (output tokens, usage, finish reason) up to date with the body chunks of one response."""

    __slots__ = ("_body", "_expected", "_info", "_json_done", "_sse")

    def __init__(self, info: ResponseInfo, headers: Mapping[str, str]) -> None:
        self._info = info
        content_type = headers.get("content-type") or headers.get("Content-Type") or ""
        self._sse = SSEBuffer() if content_type.startswith(EVENT_STREAM) else None
        length = headers.get("content-length") or headers.get("Content-Length")
        self._expected = int(length) if length is not None and length.isdigit() else None
        self._body = bytearray()
        self._json_done = False

    def feed(self, data: bytes) -> int:
        """Reads one body chunk; returns the output tokens it added."""
        if self._sse is not None:
            added = 0
            for payload in self._sse.feed(data):
                if payload != _DONE:
                    added += self._event(load_json(payload))
            return added
        if self._json_done:
            return 0
        if len(self._body) + len(data) > MAX_BUFFERED_BYTES:
            self._json_done, self._body = True, bytearray()
            return 0
        self._body += data
        if self._expected is not None and len(self._body) >= self._expected:
            return self.finish()
        return 0

    def finish(self) -> int:
        """The response ended: reads a buffered JSON body; returns the output tokens it added."""
        if self._sse is not None or self._json_done:
            return 0
        self._json_done = True
        body, self._body = self._body, bytearray()
        message = load_json(body) if body else None
        if not isinstance(message, dict):
            return 0
        reason = finish_reason_of(message)
        if reason is not None:
            self._info.finish_reason = reason
        return self._usage(message.get("usage"))

    def _event(self, message: Any) -> int:
        if not isinstance(message, dict):
            return 0
        added = chunk_tokens(message)
        self._info.output_tokens += added
        reason = finish_reason_of(message)
        if reason is not None:
            self._info.finish_reason = reason
        usage = message.get("usage")
        if usage is not None:
            added += self._usage(usage)
        return added

    def _usage(self, usage: Any) -> int:
        """Records a usage object; returns how many output tokens it adds to the count so far."""
        if not isinstance(usage, dict):
            return 0
        info = self._info
        prompt = usage.get("prompt_tokens")
        if _count(prompt):
            info.prompt_tokens = prompt
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and _count(details.get("cached_tokens")):
            info.cached_tokens = details["cached_tokens"]
        completion = usage.get("completion_tokens")
        if not isinstance(completion, int) or not _count(completion):
            return 0
        added = max(0, completion - info.output_tokens)
        info.output_tokens = completion
        return added


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
