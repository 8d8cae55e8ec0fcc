"""The request parser: what a client may send, the 4xx it gets otherwise, and that nothing else ever escapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvroute.router.framework import ApiKind
from kvroute.router.requestcontrol.body import (
    ParsedBody,
    RequestError,
    clean_headers,
    parse_body,
    valid_request_id,
)

LIMIT = 1 << 20


def parse(body: Any, api: ApiKind = ApiKind.COMPLETIONS) -> ParsedBody:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_body(raw, api, LIMIT)


def error_of(body: Any, api: ApiKind = ApiKind.COMPLETIONS, limit: int = LIMIT) -> RequestError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestError) as caught:
        parse_body(raw, api, limit)
    return caught.value


def test_a_completion_request_is_read() -> None:
    parsed = parse({"model": "m", "prompt": "hello", "stream": True, "cache_hit_threshold": 0.5, "max_tokens": 3})

    assert (parsed.model, parsed.prompt, parsed.stream, parsed.cache_hit_threshold) == ("m", "hello", True, 0.5)
    assert parsed.body["max_tokens"] == 3


@pytest.mark.parametrize(
    ("prompt", "text"),
    [
        (["only one"], "only one"),
        (["a", "b"], "a\nb"),
        ([1, 22, 333], "1,22,333"),
        ([[1, 2], [3]], "1,2\n3"),
    ],
)
def test_list_prompts_become_text_for_hashing(prompt: Any, text: str) -> None:
    assert parse({"model": "m", "prompt": prompt}).prompt == text


def test_token_id_prompts_keep_a_shared_prefix_as_a_textual_prefix() -> None:
    short = parse({"model": "m", "prompt": [5, 6, 7]}).prompt
    longer = parse({"model": "m", "prompt": [5, 6, 7, 8, 9]}).prompt

    assert longer.startswith(short)


def test_chat_messages_are_serialised_canonically() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"content": "hi", "role": "user"}]

    parsed = parse({"model": "m", "messages": messages}, ApiKind.CHAT)

    assert parsed.prompt == '[{"content":"be brief","role":"system"},{"content":"hi","role":"user"}]'
    assert not parsed.stream and parsed.cache_hit_threshold is None


def test_a_longer_conversation_extends_the_text_of_a_shorter_one() -> None:
    first = [{"role": "system", "content": "s" * 100}, {"role": "user", "content": "q1"}]
    second = [*first, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]

    short = parse({"model": "m", "messages": first}, ApiKind.CHAT).prompt
    long = parse({"model": "m", "messages": second}, ApiKind.CHAT).prompt

    assert long.startswith(short[:-1])


@pytest.mark.parametrize(
    ("body", "api", "code", "fragment"),
    [
        (b"\xff\xfe{}", ApiKind.COMPLETIONS, "invalid_utf8", "not valid UTF-8 (byte 0)"),
        (b'{"model": "m", ', ApiKind.COMPLETIONS, "invalid_json", "not valid JSON"),
        (b'{"model": "m", "prompt": NaN}', ApiKind.COMPLETIONS, "invalid_json", "NaN is not allowed"),
        (b"[1, 2]", ApiKind.COMPLETIONS, "invalid_body", "must be a JSON object, not an array"),
        (b"[" * 100_000 + b"]" * 100_000, ApiKind.COMPLETIONS, "invalid_json", ""),
        ({"prompt": "x"}, ApiKind.COMPLETIONS, "missing_model", "'model' is required"),
        ({"model": 7, "prompt": "x"}, ApiKind.COMPLETIONS, "invalid_type", "'model' must be a non-empty string"),
        ({"model": "", "prompt": "x"}, ApiKind.COMPLETIONS, "invalid_type", "not an empty string"),
        ({"model": "m"}, ApiKind.COMPLETIONS, "missing_prompt", "'prompt' is required"),
        ({"model": "m", "prompt": 5}, ApiKind.COMPLETIONS, "invalid_type", "'prompt' must be a string"),
        ({"model": "m", "prompt": []}, ApiKind.COMPLETIONS, "invalid_type", "'prompt' must be a string"),
        ({"model": "m", "prompt": [True]}, ApiKind.COMPLETIONS, "invalid_type", "'prompt' must be a string"),
        ({"model": "m"}, ApiKind.CHAT, "missing_messages", "'messages' is required"),
        ({"model": "m", "messages": "hi"}, ApiKind.CHAT, "invalid_type", "non-empty list"),
        ({"model": "m", "messages": ["hi"]}, ApiKind.CHAT, "invalid_type", "messages[0] must be an object"),
        ({"model": "m", "prompt": "x", "stream": "yes"}, ApiKind.COMPLETIONS, "invalid_type", "'stream' must be"),
        ({"model": "m", "prompt": "x", "cache_hit_threshold": "1"}, ApiKind.COMPLETIONS, "invalid_type", "number"),
        ({"model": "m", "prompt": "x", "cache_hit_threshold": 2}, ApiKind.COMPLETIONS, "invalid_value", "0 and 1"),
        (b'{"model": "m", "prompt": "\\ud800"}', ApiKind.COMPLETIONS, "invalid_value", "unpaired surrogate"),
        (b'{"model": "\\udfff", "prompt": "x"}', ApiKind.COMPLETIONS, "invalid_value", "unpaired surrogate"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_problem(body: Any, api: ApiKind, code: str, fragment: str) -> None:
    error = error_of(body, api)

    assert (error.status, error.code) == (400, code)
    assert fragment in error.message
    assert error.body() == {
        "error": {"message": error.message, "type": "invalid_request_error", "param": error.param, "code": code}
    }


def test_a_body_over_the_limit_is_a_413() -> None:
    error = error_of({"model": "m", "prompt": "x" * 100}, limit=64)

    assert (error.status, error.code) == (413, "body_too_large")
    assert json.loads(error.json_bytes())["error"]["message"] == "the request body exceeds 64 bytes"


def test_routing_headers_are_removed_whatever_their_case() -> None:
    headers = [
        ("X-Gateway-Destination-Endpoint", "10.0.0.1:80"),
        ("x-gateway-destination-endpoint-subset", "10.0.0.1:80"),
        ("X-Prefiller-Host-Port", "10.0.0.2:80"),
        ("Authorization", "Bearer t"),
        ("X-Request-Id", "abc"),
        ("x-request-id", "second"),
    ]

    assert clean_headers(headers) == {"authorization": "Bearer t", "x-request-id": "abc"}


@pytest.mark.parametrize(
    ("value", "valid"),
    [("abc-123", True), ("", False), ("a b", False), ("x" * 129, False), ("é", False)],
)
def test_client_request_ids_are_kept_only_when_sane(value: str, valid: bool) -> None:
    assert valid_request_id(value) is valid


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values | st.text(),
        "prompt": json_values | st.lists(st.integers(), max_size=5),
        "messages": json_values | st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=3), max_size=3),
        "stream": json_values,
        "cache_hit_threshold": json_values | st.floats(),
    },
)


def _parses_or_4xx(raw: bytes, api: ApiKind) -> None:
    try:
        parsed = parse_body(raw, api, 4096)
    except RequestError as exc:
        error: RequestError | None = exc
    else:
        error = None
        assert isinstance(parsed.model, str) and parsed.model
        parsed.prompt.encode("utf-8")
    if error is not None:
        assert error.status in (400, 413)
        assert json.loads(error.json_bytes())["error"]["code"] == error.code


@settings(max_examples=400, deadline=None)
@given(raw=st.binary(max_size=512), api=st.sampled_from([ApiKind.COMPLETIONS, ApiKind.CHAT]))
def test_fuzz_arbitrary_bytes_parse_or_give_a_4xx(raw: bytes, api: ApiKind) -> None:
    _parses_or_4xx(raw, api)


@settings(max_examples=400, deadline=None)
@given(body=request_like, api=st.sampled_from([ApiKind.COMPLETIONS, ApiKind.CHAT]))
def test_fuzz_request_shaped_json_parses_or_gives_a_4xx(body: dict[str, Any], api: ApiKind) -> None:
    _parses_or_4xx(json.dumps(body).encode(), api)
