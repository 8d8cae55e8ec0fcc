"""`/metrics` of a real server, parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def sim(module_sim_fleet: Any) -> Any:
    return module_sim_fleet.start(
        "--time-scale", "0.5", "--lora-modules", "ad", "--max-loras", "2", "--num-gpu-blocks", "5000"
    )


class Scrape:
    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, sample_name: str, **labels: str) -> float:
        family = self.families[sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")]
        matches = [
            s.value
            for s in family.samples
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(matches) == 1, f"{sample_name}{labels}: {matches}"
        return matches[0]

    def labels(self, family: str) -> dict[str, str]:
        (sample,) = self.families[family].samples
        return sample.labels


async def scrape(session: aiohttp.ClientSession, sim: Any) -> Scrape:
    async with session.get(f"{sim.base_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Scrape(await response.text())


async def complete(session: aiohttp.ClientSession, sim: Any, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(f"{sim.base_url}/v1/completions", json=body) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def test_every_vllm_family_is_exported_with_the_model_label(sim: Any) -> None:
    async with aiohttp.ClientSession() as session:
        metrics = await scrape(session, sim)
    expected = {
        "vllm:num_requests_waiting": "gauge",
        "vllm:num_requests_running": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:cache_config_info": "gauge",
        "vllm:lora_requests_info": "gauge",
        "vllm:prefix_cache_queries": "counter",
        "vllm:prefix_cache_hits": "counter",
        "vllm:prompt_tokens": "counter",
        "vllm:generation_tokens": "counter",
        "vllm:request_success": "counter",
        "vllm:num_preemptions": "counter",
        "vllm:time_to_first_token_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
    }
    assert {name: metrics.families[name].type for name in expected} == expected
    # vLLM 0.34's labels: model_name and engine on the engine's series, engine only on cache_config_info, neither
    # on lora_requests_info.
    assert metrics.labels("vllm:num_requests_running") == {"model_name": MODEL, "engine": "0"}
    config = metrics.labels("vllm:cache_config_info")
    assert (config["block_size"], config["num_gpu_blocks"], config["engine"]) == ("16", "5000", "0")
    assert "model_name" not in metrics.labels("vllm:lora_requests_info")
    assert metrics.labels("vllm:lora_requests_info")["max_lora"] == "2"


async def test_counters_move_by_the_tokens_of_each_request(sim: Any) -> None:
    prompt = "metrics-repeat " * 27  # 405 characters: 102 tokens, 6 full blocks reusable
    async with aiohttp.ClientSession() as session:
        before = await scrape(session, sim)
        await complete(session, sim, {"prompt": prompt, "max_tokens": 3})
        middle = await scrape(session, sim)
        second = await complete(session, sim, {"prompt": prompt, "max_tokens": 3})
        after = await scrape(session, sim)

    def delta(a: Scrape, b: Scrape, name: str, **labels: str) -> float:
        return b.value(name, **labels) - a.value(name, **labels)

    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 96
    assert delta(before, middle, "vllm:prefix_cache_queries_total") == 102
    assert delta(before, middle, "vllm:prefix_cache_hits_total") == 0
    assert delta(middle, after, "vllm:prefix_cache_queries_total") == 102
    assert delta(middle, after, "vllm:prefix_cache_hits_total") == 96
    assert delta(before, after, "vllm:prompt_tokens_total") == 204
    assert delta(before, after, "vllm:generation_tokens_total") == 6
    assert delta(before, after, "vllm:request_success_total", finished_reason="length") == 2
    assert delta(before, after, "vllm:time_to_first_token_seconds_count") == 2
    assert delta(before, after, "vllm:e2e_request_latency_seconds_count") == 2
    # Modelled TTFT: a 102-token prefill is 6 ms + 102 x 36 us = 9.7 ms, the cached one 6 ms + 6 x 36 us = 6.2 ms.
    ttft_sum = delta(before, after, "vllm:time_to_first_token_seconds_sum")
    assert 0.0158 <= ttft_sum <= 0.0158 + 0.02  # margin: the idle driver may wake late on a busy machine


async def test_gauges_show_a_request_while_it_runs(sim: Any) -> None:
    async with aiohttp.ClientSession() as session:
        # 300 decode steps of ~6 ms modelled = ~0.9 s of wall time at --time-scale 0.5.
        slow = asyncio.create_task(complete(session, sim, {"prompt": "slow " * 50, "max_tokens": 300, "model": "ad"}))
        await asyncio.sleep(0.3)
        during = await scrape(session, sim)
        await slow
        after = await scrape(session, sim)

    assert during.value("vllm:num_requests_running") == 1
    assert 0 < during.value("vllm:kv_cache_usage_perc") < 0.01
    assert during.labels("vllm:lora_requests_info")["running_lora_adapters"] == "ad"
    assert after.value("vllm:num_requests_running") == 0
    assert after.labels("vllm:lora_requests_info")["running_lora_adapters"] == ""
    assert after.value("vllm:kv_cache_usage_perc") == 0


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
async def test_a_client_that_goes_away_aborts_its_request(sim: Any, stream: bool) -> None:
    body = {"prompt": "abandon " * 40, "max_tokens": 1000, "stream": stream}
    async with aiohttp.ClientSession() as session:
        before = await scrape(session, sim)
        async with aiohttp.ClientSession() as leaving:
            if stream:
                response = await leaving.post(f"{sim.base_url}/v1/completions", json=body)
                await response.content.readuntil(b"\n\n")  # the first token arrived, then hang up
                response.close()
            else:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(leaving.post(f"{sim.base_url}/v1/completions", json=body), 0.3)
        for _ in range(50):
            after = await scrape(session, sim)
            if after.value("vllm:num_requests_running") == 0:
                break
            await asyncio.sleep(0.02)

    assert after.value("vllm:num_requests_running") == 0
    assert after.value("vllm:kv_cache_usage_perc") == 0
    aborted = after.value("vllm:request_success_total", finished_reason="abort")
    assert aborted - before.value("vllm:request_success_total", finished_reason="abort") == 1
    # Far fewer tokens than the 1000 asked for were generated before the abort.
    generated = after.value("vllm:generation_tokens_total") - before.value("vllm:generation_tokens_total")
    assert 1 <= generated < 200
