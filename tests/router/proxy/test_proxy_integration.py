"""`kvroute router --mode proxy` as a real subprocess in front of four `kvroute sim serve` processes."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.integration

MODEL = "kvroute-test"
SIM_ARGS = ("--model", MODEL, "--time-scale", "0.05")

PREFIX_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: prefix-cache-scorer
  - type: no-hit-lru-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: prefix-cache-scorer, weight: 3}
      - {pluginRef: no-hit-lru-scorer, weight: 2}
      - {pluginRef: max-score-picker}
"""


@pytest.fixture(scope="module")
def sims(module_sim_fleet: Any) -> list[Any]:
    return [module_sim_fleet.start(*SIM_ARGS) for _ in range(4)]


@pytest.fixture(scope="module")
def prefix_router(sims: list[Any], module_routers: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Shared by the tests that do not depend on its routing state: a fresh one per test would cost 0.5 s each."""
    config = tmp_path_factory.mktemp("prefix") / "prefix.yaml"
    config.write_text(PREFIX_CONFIG)
    spec = ",".join(f"{sim.host}:{sim.port}" for sim in sims)
    return module_routers(spec, "--max-body-bytes", "65536", config=config)


def test_the_openai_client_is_served_streaming_and_not(
    sims: list[Any], routers: Callable[..., Any], spec_of: Callable[..., str], require_component: Any
) -> None:
    openai: ModuleType = require_component("openai")
    router = routers(spec_of(sims))
    pods = {sim.pod_name for sim in sims}
    client = openai.OpenAI(base_url=f"{router.base_url}/v1", api_key="unused", max_retries=0, timeout=20)
    try:
        assert [m.id for m in client.models.list().data] == [MODEL]

        raw = client.completions.with_raw_response.create(model=MODEL, prompt="The capital of", max_tokens=5)
        completion = raw.parse()
        assert raw.headers["x-inference-pod"] in pods
        assert completion.usage.completion_tokens == 5
        assert completion.choices[0].finish_reason == "length"

        chat = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=4
        )
        assert chat.headers["x-inference-pod"] in pods
        assert chat.parse().usage.completion_tokens == 4

        stream = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=6, stream=True)
        texts = [choice.text for chunk in stream for choice in chunk.choices]
        assert len([t for t in texts if t]) == 6

        chat_stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count to three"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(chat_stream)
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 3
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    finally:
        client.close()


async def _pod_of(client: aiohttp.ClientSession, router: Any, prompt: str, **headers: str) -> str:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    async with client.post(f"{router.base_url}/v1/completions", json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        await response.read()
        return response.headers["x-inference-pod"]


async def test_a_shared_prefix_sticks_and_cold_prefix_groups_spread(
    sims: list[Any], routers: Callable[..., Any], spec_of: Callable[..., str], tmp_path: Path
) -> None:
    config = tmp_path / "prefix.yaml"
    config.write_text(PREFIX_CONFIG)
    router = routers(spec_of(sims), config=config)
    groups = [f"group {g}: " + f"{g} all work and no play makes a dull model. " * 30 for g in "ABCD"]

    async with aiohttp.ClientSession() as client:
        first = [await _pod_of(client, router, prefix + "question 0") for prefix in groups]
        later = [[await _pod_of(client, router, f"{p}question {i}") for i in range(1, 6)] for p in groups]

    assert len(set(first)) == 4, first
    for pod, pods in zip(first, later, strict=True):
        assert set(pods) == {pod}


async def test_a_client_cannot_steer_routing_with_headers(prefix_router: Any, sims: list[Any]) -> None:
    prompt = "steer me " * 100

    async with aiohttp.ClientSession() as client:
        pod = await _pod_of(client, prefix_router, prompt)
        other = next(sim for sim in sims if sim.pod_name != pod)
        steered = [
            await _pod_of(
                client,
                prefix_router,
                prompt,
                **{
                    "x-gateway-destination-endpoint": f"{other.host}:{other.port}",
                    "X-Gateway-Destination-Endpoint-Served": f"{other.host}:{other.port}",
                    "x-prefiller-host-port": f"{other.host}:{other.port}",
                },
            )
            for _ in range(5)
        ]

    assert set(steered) == {pod}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"),
    [
        ("/v1/completions", b'{"model": "m", "prompt": ', {}, 400, "invalid_json"),
        ("/v1/completions", b'{"prompt": "x"}', {}, 400, "missing_model"),
        ("/v1/completions", b'{"model": "m", "prompt": 12}', {}, 400, "invalid_type"),
        ("/v1/chat/completions", b'{"model": "m", "messages": {"role": "user"}}', {}, 400, "invalid_type"),
        ("/v1/completions", b'{"model": "m", "prompt": "x", "stream": "yes"}', {}, 400, "invalid_type"),
        ("/v1/completions", b'{"model": "m", "prompt": "\xc3\x28"}', {}, 400, "invalid_utf8"),
        ("/v1/completions", b'{"model": "m", "prompt": "' + b"x" * 70000 + b'"}', {}, 413, "body_too_large"),
        ("/v1/completions", b"", {}, 400, "invalid_json"),
        ("/v1/nothing", b"{}", {}, 404, "not_found"),
    ],
)
async def test_malformed_requests_get_a_json_4xx(
    prefix_router: Any, path: str, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{prefix_router.base_url}{path}", data=body, headers=headers) as response,
    ):
        answer = json.loads(await response.read())

    assert response.status == status
    assert answer["error"]["code"] == code
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]


async def test_an_oversized_chunked_body_gets_413_and_the_router_keeps_serving(prefix_router: Any) -> None:
    async def body() -> Any:
        yield b'{"model": "m", "prompt": "'
        for _ in range(100):
            yield b"z" * 1000
        yield b'"}'

    async with aiohttp.ClientSession() as client:
        async with client.post(f"{prefix_router.base_url}/v1/completions", data=body()) as response:
            assert response.status == 413
        replies = await asyncio.gather(*(_pod_of(client, prefix_router, f"after {i}") for i in range(4)))

    assert len(replies) == 4


async def test_requests_are_spread_and_counted_in_metrics(
    sims: list[Any], routers: Callable[..., Any], spec_of: Callable[..., str]
) -> None:
    router = routers(spec_of(sims))

    async with aiohttp.ClientSession() as client:
        pods = await asyncio.gather(*(_pod_of(client, router, f"distinct prompt {i}") for i in range(24)))
        async with client.get(f"{router.base_url}/metrics") as response:
            metrics = await response.text()

    assert len(Counter(pods)) >= 2
    assert 'kvroute_requests_total{api="completions",code="200"} 24.0' in metrics
    in_flight = [line for line in metrics.splitlines() if line.startswith("kvroute_requests_in_flight{")]
    assert len(in_flight) == len(Counter(pods))
    assert all(line.endswith(" 0.0") for line in in_flight)
