"""Reading a client request: the typed error every front door answers with, header hygiene, and the body parser.

The body must be UTF-8 JSON (no `NaN`/`Infinity`), an object, with:

- `model`: a non-empty string (required);
- completions: `prompt`, a string or a non-empty list (strings, token ids, or lists of token ids);
- chat: `messages`, a non-empty list of objects;
- optional `stream` (boolean or null) and `cache_hit_threshold` (a number in [0, 1] or null).

Everything else is passed to the model server untouched. Anything wrong raises `RequestError(400)` naming the
field; a body over the limit raises `RequestError(413)`. The parser never raises anything else.

The text hashed for prefix affinity (`LLMRequest.prompt`) is, for completions, the prompt string itself (a list
of one string: that string; token ids: the decimal ids joined by ","; several strings: joined by "\\n"), and for
chat the canonical serialisation

    json.dumps(messages, separators=(",", ":"), sort_keys=True)

which keeps two conversations that start with the same messages sharing a textual prefix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kvroute.router.framework import ApiKind

ROUTING_HEADER_PREFIXES = ("x-gateway-destination-endpoint", "x-prefiller-host-port")
REQUEST_ID_HEADER = "x-request-id"

_ERROR_TYPES = {429: "rate_limit_error", 500: "internal_error", 502: "upstream_error", 503: "service_unavailable"}


class RequestError(Exception):
    """A request answered with an error instead of being forwarded: an HTTP status and an OpenAI-style body
    `{"error": {"message", "type", "param", "code"}}`, where `code` is a short machine-readable reason."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers: Mapping[str, str] = headers or {}  # sent with the answer (e.g. `retry-after` on a 429)

    @property
    def type(self) -> str:
        return _ERROR_TYPES.get(self.status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


def bad_request(message: str, code: str, param: str | None = None) -> RequestError:
    return RequestError(400, message, code, param)


def too_large(limit: int) -> RequestError:
    return RequestError(413, f"the request body exceeds {limit} bytes", "body_too_large")


def is_routing_header(name: str) -> bool:
    """Headers that steer routing: a client must never set them (no client-steered routing, no SSRF)."""
    return name.lower().startswith(ROUTING_HEADER_PREFIXES)


def clean_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The client's headers with lower-cased names, routing headers removed; a repeated header keeps its first
    value."""
    cleaned: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key not in cleaned and not key.startswith(ROUTING_HEADER_PREFIXES):
            cleaned[key] = value
    return cleaned


def valid_request_id(value: str) -> bool:
    """A client-chosen request id is kept when it is 1-128 visible ASCII characters; otherwise one is made."""
    return 0 < len(value) <= 128 and value.isascii() and value.isprintable() and " " not in value


@dataclass(frozen=True, slots=True)
class ParsedBody:
    body: dict[str, Any]
    model: str
    prompt: str
    stream: bool
    cache_hit_threshold: float | None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # one for all: `json.loads` would build one per call


def decode_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or `RequestError(400)`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"the request body is not valid UTF-8 (byte {exc.start})", "invalid_utf8") from None
    try:
        body = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        message = f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise bad_request(message, "invalid_json") from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply", "invalid_json") from None
    except ValueError as exc:  # NaN/Infinity, or an integer beyond Python's digit limit
        raise bad_request(f"the request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, not {_json_type(body)}", "invalid_body")
    return body


def parse_body(raw: bytes, api: ApiKind, max_bytes: int) -> ParsedBody:
    if len(raw) > max_bytes:
        raise too_large(max_bytes)
    body = decode_json(raw)
    model = body.get("model")
    if model is None:
        raise bad_request("'model' is required", "missing_model", "model")
    if not isinstance(model, str) or not model:
        raise bad_request(f"'model' must be a non-empty string, not {_json_type(model)}", "invalid_type", "model")
    prompt = _chat_prompt(body.get("messages")) if api is ApiKind.CHAT else _completion_prompt(body.get("prompt"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request(f"'stream' must be a boolean, not {_json_type(stream)}", "invalid_type", "stream")
    salt = body.get("cache_salt")
    for name, text in (("model", model), ("prompt", prompt), ("cache_salt", salt)):
        if isinstance(text, str) and not _encodable(text):
            raise bad_request(f"'{name}' contains an unpaired surrogate", "invalid_value", name)
    return ParsedBody(body, model, prompt, bool(stream), _threshold(body.get("cache_hit_threshold")))


def _encodable(text: str) -> bool:
    """Whether `text` has a UTF-8 form (JSON can carry lone surrogates, which hashing cannot encode)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _completion_prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if prompt is None:
        raise bad_request("'prompt' is required", "missing_prompt", "prompt")
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return "\n".join(prompt)
        if all(_is_int(t) for t in prompt):
            return ",".join(map(str, prompt))
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return "\n".join(",".join(map(str, p)) for p in prompt)
    message = "'prompt' must be a string, or a non-empty list of strings, token ids or lists of token ids"
    raise bad_request(message, "invalid_type", "prompt")


def _chat_prompt(messages: Any) -> str:
    if messages is None:
        raise bad_request("'messages' is required", "missing_messages", "messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "invalid_type", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{index}] must be an object", "invalid_type", "messages")
    return json.dumps(messages, separators=(",", ":"), sort_keys=True)


def _threshold(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise bad_request("'cache_hit_threshold' must be a number", "invalid_type", "cache_hit_threshold")
    if not 0 <= value <= 1:
        raise bad_request(
            f"'cache_hit_threshold' must be between 0 and 1, got {value}", "invalid_value", "cache_hit_threshold"
        )
    return float(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "an array"
    return "an object"
