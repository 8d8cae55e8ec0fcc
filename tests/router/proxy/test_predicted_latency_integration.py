"""`predicted-latency-scorer` in a real `kvroute router --mode proxy` process in front of four real simulators,
one of them three times slower: it learns which one and keeps prefix affinity.

Every load loop is bounded in count (a fixed number of requests) and in time (`asyncio.wait_for`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.integration

MODEL = "kvroute-test"
FAST = ("--model", MODEL, "--time-scale", "0.5")
SLOW = ("--model", MODEL, "--time-scale", "1.5")

CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: prefix-cache-scorer
  - type: predicted-latency-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: prefix-cache-scorer, weight: 0}
      - {pluginRef: predicted-latency-scorer, weight: 1}
      - {pluginRef: max-score-picker}
"""

Result = tuple[int, str]  # status, x-inference-pod (or the error)


async def send(client: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int = 16) -> Result:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    try:
        async with client.post(f"{url}/v1/completions", json=body) as response:
            text = await response.text()
            return response.status, response.headers.get("x-inference-pod", text)
    except aiohttp.ClientError as exc:
        return 0, repr(exc)


async def run_load(url: str, prompts: list[str], concurrency: int, within: float) -> list[Result]:
    """Sends every prompt once from `concurrency` workers; fails the test after `within` seconds."""
    queue = iter(prompts)
    results: list[Result] = []

    async def worker(client: aiohttp.ClientSession) -> None:
        for prompt in queue:
            results.append(await send(client, url, prompt))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as client:
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(concurrency))), within)
    return results


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "predicted-latency.yaml"
    path.write_text(CONFIG)
    return path


async def test_a_three_times_slower_simulator_gets_clearly_fewer_requests(
    sim_fleet: Any, routers: Callable[..., Any], spec_of: Callable[..., str], config: Path
) -> None:
    fast = [sim_fleet.start(*FAST) for _ in range(3)]
    slow = sim_fleet.start(*SLOW)
    router = routers(spec_of([*fast, slow]), config=config)
    prompts = [f"request {i}: " + "tell me a long story about the sea. " * (10 + i % 40) for i in range(160)]

    results = await run_load(router.base_url, prompts, 12, within=20)

    assert [r for r in results if r[0] != 200] == []
    served = Counter(pod for _, pod in results)
    assert sum(served.values()) == 160
    fewest_fast = min(served[sim.pod_name] for sim in fast)
    assert served[slow.pod_name] < 0.6 * fewest_fast, served


async def test_a_repeated_long_prompt_stays_on_one_simulator(
    sim_fleet: Any, routers: Callable[..., Any], spec_of: Callable[..., str], config: Path
) -> None:
    sims = [sim_fleet.start(*FAST) for _ in range(3)]
    router = routers(spec_of(sims), config=config)
    shared = "You are a meticulous assistant who cites every source. " * 60  # about 800 tokens
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as client:
        answers = [await send(client, router.base_url, shared + f"Question {i}?", 4) for i in range(8)]
        others = await asyncio.wait_for(
            asyncio.gather(*(send(client, router.base_url, f"{i} unrelated " * 200, 4) for i in range(6))), 15
        )

    assert [status for status, _ in answers + list(others)] == [200] * 14
    assert len({pod for _, pod in answers}) == 1, answers  # one prefix, one simulator
    assert len({pod for _, pod in others}) >= 2, others  # concurrent cold prompts spread by predicted queue
    assert {pod for _, pod in answers + list(others)} <= {sim.pod_name for sim in sims}
