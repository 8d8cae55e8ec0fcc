"""Serving behaviours beyond plain completions: the cache hit threshold and P/D disaggregation."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvroute.simulator.engine.profiles import PROFILES

pytestmark = pytest.mark.integration

H100 = PROFILES["llama-3.1-8b-h100"]


def fresh_prompt(tag: str, tokens: int) -> str:
    seed = f"{tag}-{time.monotonic_ns()}|"
    return (seed * (tokens * 4 // len(seed) + 1))[: tokens * 4]


async def complete(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(f"{url}/v1/completions", json=body) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def ttft_sum(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    (line,) = [x for x in text.splitlines() if x.startswith("vllm:time_to_first_token_seconds_sum")]
    return float(line.rsplit(" ", 1)[1])


@pytest.fixture(scope="module")
def sim(module_sim_fleet: Any) -> Any:
    return module_sim_fleet.start("--time-scale", "0.1")


async def test_cache_threshold_finishes_a_cold_request_and_serves_a_warm_one(sim: Any) -> None:
    prompt = fresh_prompt("threshold", 400)
    async with aiohttp.ClientSession() as session:
        cold = await complete(session, sim.base_url, {"prompt": prompt, "max_tokens": 5, "cache_hit_threshold": 0.9})
        await complete(session, sim.base_url, {"prompt": prompt, "max_tokens": 1})
        warm = await complete(session, sim.base_url, {"prompt": prompt, "max_tokens": 5, "cache_hit_threshold": 0.9})

    assert cold["choices"][0]["finish_reason"] == "cache_threshold"
    assert cold["choices"][0]["text"] == ""
    assert cold["usage"]["completion_tokens"] == 0
    assert cold["usage"]["prompt_tokens"] == 400
    # 384 of 400 tokens cached = 0.96 >= 0.9
    assert warm["choices"][0]["finish_reason"] == "length"
    assert (warm["usage"]["completion_tokens"], warm["usage"]["prompt_tokens_details"]["cached_tokens"]) == (5, 384)


async def test_cache_threshold_in_a_stream_is_one_chunk_with_that_finish_reason(sim: Any) -> None:
    body = {
        "messages": [{"role": "user", "content": fresh_prompt("stream-threshold", 100)}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "cache_hit_threshold": 0.5,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim.base_url}/v1/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        events = [line for line in (await response.text()).split("\n\n") if line]

    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finishing] == ["cache_threshold"]
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks if c["choices"])
    assert chunks[-1]["usage"]["completion_tokens"] == 0


async def test_global_cache_hit_threshold_applies_unless_the_request_sets_its_own(sim_fleet: Any) -> None:
    strict = sim_fleet.start("--time-scale", "0.1", "--global-cache-hit-threshold", "0.5")
    async with aiohttp.ClientSession() as session:
        refused = await complete(session, strict.base_url, {"prompt": fresh_prompt("global", 100)})
        own = await complete(session, strict.base_url, {"prompt": fresh_prompt("g2", 100), "cache_hit_threshold": 0})
        async with session.get(f"{strict.base_url}/metrics") as response:
            metrics = await response.text()

    assert refused["choices"][0]["finish_reason"] == "cache_threshold"
    assert own["choices"][0]["finish_reason"] == "length"
    (success,) = [f for f in text_string_to_metric_families(metrics) if f.name == "vllm:request_success"]
    by_reason = {s.labels["finished_reason"]: s.value for s in success.samples if s.name.endswith("_total")}
    assert (by_reason["cache_threshold"], by_reason["length"]) == (1, 1)


async def test_prefill_server_hands_off_and_decode_server_pulls_the_kv(sim_fleet: Any) -> None:
    prefill = sim_fleet.start("--role", "prefill", "--pod-name", "prefill-0")
    decode = sim_fleet.start("--role", "decode")
    prompt = fresh_prompt("pd", 3000)
    async with aiohttp.ClientSession() as session:
        handed = await complete(
            session,
            prefill.base_url,
            {"prompt": prompt, "max_tokens": 8, "kv_transfer_params": {"do_remote_decode": True}},
        )
        params = handed["kv_transfer_params"]
        before = await ttft_sum(session, decode.base_url)
        decoded = await complete(
            session, decode.base_url, {"prompt": prompt, "max_tokens": 4, "kv_transfer_params": params}
        )
        decode_ttft = await ttft_sum(session, decode.base_url) - before

    assert handed["usage"]["completion_tokens"] == 1  # a prefill server stops after the first token
    assert params["do_remote_prefill"] is True
    assert (params["remote_host"], params["remote_port"]) == (prefill.host, prefill.port)
    assert params["remote_engine_id"] == "prefill-0"
    assert len(params["remote_block_ids"]) == 187
    assert decoded["usage"]["completion_tokens"] == 4
    assert "kv_transfer_params" not in decoded
    # The decode server's TTFT is the KV transfer and one decode step, not a 114 ms prefill.
    transfer = H100.kv_transfer_setup_s + 3000 * H100.kv_transfer_per_token_s
    expected = transfer + H100.step_time(0, 1, 2999)
    assert expected <= decode_ttft <= expected + 0.03  # margin for a busy machine; a prefill would add 114 ms


async def test_roles_ignore_the_other_side_of_the_handoff(sim_fleet: Any) -> None:
    decode = sim_fleet.start("--role", "decode", "--time-scale", "0.1")
    body = {"prompt": fresh_prompt("role", 64), "max_tokens": 3, "kv_transfer_params": {"do_remote_decode": True}}
    async with aiohttp.ClientSession() as session:
        answer = await complete(session, decode.base_url, body)
    assert answer["usage"]["completion_tokens"] == 3
    assert "kv_transfer_params" not in answer
