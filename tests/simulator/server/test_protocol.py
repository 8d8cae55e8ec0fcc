"""Request validation: unit tests of the parsers, then every kind of bad input against a real server process."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest

from kvroute.simulator.server.errors import APIError
from kvroute.simulator.server.protocol import ModelCatalog, decode_json_body, parse_chat, parse_completion
from kvroute.simulator.tokenizer import Tokenizer

CATALOG = ModelCatalog(["base", "alias"], ["ad=/path/ad"], max_model_len=1000)
TOKENIZER = Tokenizer()


def completion(body: dict[str, Any], default_max_tokens: int = 16) -> Any:
    return parse_completion(body, CATALOG, TOKENIZER, default_max_tokens=default_max_tokens)


def error_of(body: dict[str, Any]) -> APIError:
    with pytest.raises(APIError) as caught:
        completion(body)
    return caught.value


def test_prompt_forms_tokenize_to_the_same_ids() -> None:
    ids = TOKENIZER.encode("abcdefgh")
    assert completion({"prompt": "abcdefgh"}).prompt_token_ids == ids
    assert completion({"prompt": ["abcdefgh"]}).prompt_token_ids == ids
    assert completion({"prompt": ids}).prompt_token_ids == ids
    assert completion({"prompt": [ids]}).prompt_token_ids == ids


def test_model_names_resolve_to_base_or_lora() -> None:
    assert completion({"prompt": "a"}).model == "base"
    alias = completion({"prompt": "a", "model": "alias"})
    assert (alias.model, alias.lora_name) == ("alias", None)
    assert completion({"prompt": "a", "model": "ad"}).lora_name == "ad"
    missing = error_of({"prompt": "a", "model": "other"})
    assert (missing.status, missing.body()["error"]["type"]) == (404, "NotFoundError")


def test_default_max_tokens_shrinks_to_fit_the_context() -> None:
    assert completion({"prompt": "a"}).max_tokens == 16
    assert completion({"prompt": [1] * 990}).max_tokens == 10


def test_context_overflow_reports_both_lengths() -> None:
    error = error_of({"prompt": [1] * 900, "max_tokens": 200})
    assert error.status == 400
    assert error.message == (
        "This model's maximum context length is 1000 tokens. However, you requested 1100 tokens (900 in the "
        "prompt, 200 in the completion). Please reduce the length of the prompt or completion."
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": [10**30]}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "a", "model": 3}, "model"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "max_tokens": -5}, "max_tokens"),
        ({"prompt": "a", "max_tokens": 10**40}, "max_tokens"),
        ({"prompt": "a", "max_tokens": "7"}, "max_tokens"),
        ({"prompt": "a", "max_tokens": True}, "max_tokens"),
        ({"prompt": "a", "max_tokens": 2.5}, "max_tokens"),
        ({"prompt": "a", "stream": "yes"}, "stream"),
        ({"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "a", "stream": True, "stream_options": []}, "stream_options"),
        ({"prompt": "a", "stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"prompt": "a", "n": 2}, "n"),
        ({"prompt": "a", "cache_hit_threshold": 1.5}, "cache_hit_threshold"),
        ({"prompt": "a", "cache_hit_threshold": "high"}, "cache_hit_threshold"),
        ({"prompt": "a", "kv_transfer_params": [1]}, "kv_transfer_params"),
        ({"prompt": "a", "seed": "x"}, "seed"),
    ],
)
def test_bad_completion_fields_are_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    error = error_of(body)
    assert (error.status, error.param) == (400, param)


@pytest.mark.parametrize(
    "messages",
    [
        None,
        [],
        "hi",
        [1],
        [{"content": "no role"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "image_url"}]}],
    ],
)
def test_bad_chat_messages_are_400(messages: Any) -> None:
    with pytest.raises(APIError) as caught:
        parse_chat({"messages": messages}, CATALOG, TOKENIZER, default_max_tokens=16)
    assert (caught.value.status, caught.value.param) == (400, "messages")


def test_chat_prefers_max_completion_tokens() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 3}
    assert parse_chat(body, CATALOG, TOKENIZER, default_max_tokens=16).max_tokens == 3
    body["max_completion_tokens"] = 5
    assert parse_chat(body, CATALOG, TOKENIZER, default_max_tokens=16).max_tokens == 5


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"{nope", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, not an array"),
        (b"null", "must be a JSON object, not null"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": ' + b"1" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_undecodable_bodies_are_400(raw: bytes, message: str) -> None:
    with pytest.raises(APIError) as caught:
        decode_json_body(raw)
    assert caught.value.status == 400
    assert message in caught.value.message


# ---- the same against a server process ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(module_sim_fleet: Any) -> Any:
    return module_sim_fleet.start("--profile", "tiny", "--time-scale", "0.05")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "path", "data", "status", "message"),
    [
        ("POST", "/v1/completions", b"{not json", 400, "not valid JSON"),
        ("POST", "/v1/completions", b'"a string"', 400, "must be a JSON object"),
        ("POST", "/v1/completions", b"\xc3\x28", 400, "not valid UTF-8"),
        ("POST", "/v1/completions", b"", 400, "not valid JSON"),
        ("POST", "/v1/completions", b'{"prompt": 12}', 400, "'prompt' must be"),
        ("POST", "/v1/completions", b'{"prompt": "a", "max_tokens": -1}', 400, "at least 1"),
        (
            "POST",
            "/v1/completions",
            b'{"prompt": "a", "max_tokens": 99999999999999}',
            400,
            "maximum context length is 4096",
        ),
        (
            "POST",
            "/v1/completions",
            json.dumps({"prompt": "x" * 20_000}).encode(),
            400,
            "maximum context length is 4096",
        ),
        ("POST", "/v1/completions", b'{"prompt": "a", "model": "gpt-9"}', 404, "does not exist"),
        ("POST", "/v1/chat/completions", b'{"messages": "hi"}', 400, "'messages' must be"),
        ("POST", "/v1/chat/completions", b"[]", 400, "must be a JSON object"),
        ("POST", "/tokenize", b'{"nothing": 1}', 400, "'prompt' (a string) or 'messages'"),
        ("GET", "/v1/completions", b"", 405, "GET is not allowed"),
        ("POST", "/v1/models", b"", 405, "POST is not allowed"),
        ("GET", "/no/such/path", b"", 404, "no route"),
    ],
)
async def test_bad_requests_get_json_errors_and_the_server_stays_healthy(
    sim: Any, method: str, path: str, data: bytes, status: int, message: str
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{sim.base_url}{path}", data=data) as response:
            body = await response.json()
            assert response.status == status
            assert response.headers["x-inference-pod"] == sim.pod_name
        assert body["error"]["code"] == status
        assert message in body["error"]["message"]
        async with session.get(f"{sim.base_url}/health") as health:
            assert health.status == 200


@pytest.mark.integration
async def test_body_over_the_limit_is_413(sim: Any) -> None:
    body = io.BytesIO(b'{"prompt": "' + b"a" * (33 * 1024 * 1024) + b'"}')
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sim.base_url}/v1/completions", data=body) as response:
            assert response.status == 413
            error = (await response.json())["error"]
        assert (error["type"], error["code"]) == ("RequestEntityTooLargeError", 413)
        async with session.get(f"{sim.base_url}/health") as health:
            assert health.status == 200


@pytest.mark.integration
async def test_a_request_too_big_for_the_kv_cache_is_400(module_sim_fleet: Any) -> None:
    small = module_sim_fleet.start("--profile", "tiny", "--num-gpu-blocks", "4", "--time-scale", "0.05")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{small.base_url}/v1/completions", json={"prompt": "x" * 400}) as response,
    ):
        assert response.status == 400
        assert "KV cache" in (await response.json())["error"]["message"]
