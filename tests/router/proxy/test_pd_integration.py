"""P/D disaggregation executed by the proxy against a prefill and a decode simulator, in both modes.

That the KV cache moved is read from the simulators themselves: the prefill server finishes one request per
disaggregated request (after its single token), and in decode-first mode the decode server's
`finished_reason="cache_threshold"` counter shows when it handed a request back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.integration

MODEL = "kvroute-test"
SIM = ("--model", MODEL, "--time-scale", "0.05")

PD_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: prefill-filter
  - type: decode-filter
  - type: prefix-cache-scorer
  - type: queue-scorer
  - type: max-score-picker
  - type: pd-profile-handler
    parameters: {mode: %(mode)s, threshold: 0, cacheHitThreshold: 0.5}
schedulingProfiles:
  - name: prefill
    plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
  - name: decode
    plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer}, {pluginRef: max-score-picker}]
"""


async def finished(sim: Any, reason: str) -> int:
    """The simulator's `vllm:request_success_total` for one finish reason."""
    async with aiohttp.ClientSession() as client, client.get(f"{sim.base_url}/metrics") as response:
        text = await response.text()
    pattern = rf'^vllm:request_success_total\{{[^}}]*finished_reason="{reason}"[^}}]*\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


async def generate(router: Any, prompt: str, *, stream: bool, chat: bool = False) -> tuple[str, int, str]:
    """(x-inference-pod, output tokens, finish reason) of one request through the router."""
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 5, "stream": stream}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if stream:
        body["stream_options"] = {"include_usage": True}
    path = "/v1/chat/completions" if chat else "/v1/completions"
    async with aiohttp.ClientSession() as client, client.post(f"{router.base_url}{path}", json=body) as response:
        assert response.status == 200, await response.text()
        raw = await response.read()
        pod = response.headers["x-inference-pod"]
    if not stream:
        answer = json.loads(raw)
        return pod, answer["usage"]["completion_tokens"], answer["choices"][0]["finish_reason"]
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ") and line != "data: [DONE]"]
    chunks = [json.loads(e) for e in events]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    return pod, chunks[-1]["usage"]["completion_tokens"], reasons[-1]


@pytest.fixture
def pd(sim_fleet: Any, routers: Callable[..., Any], tmp_path: Path) -> Callable[[str], tuple[Any, Any, Any]]:
    """`pd(mode)`: a prefill simulator, a decode simulator and a router disaggregating between them."""

    def start(mode: str) -> tuple[Any, Any, Any]:
        prefill = sim_fleet.start(*SIM, "--role", "prefill")
        decode = sim_fleet.start(*SIM, "--role", "decode")
        config = tmp_path / f"{mode}.yaml"
        config.write_text(PD_CONFIG % {"mode": mode})
        spec = f"{prefill.host}:{prefill.port};role=prefill,{decode.host}:{decode.port};role=decode"
        return prefill, decode, routers(spec, config=config)

    return start


@pytest.mark.parametrize("stream", [False, True])
async def test_prefill_first_runs_the_prefill_then_the_decode(pd: Any, stream: bool) -> None:
    prefill, decode, router = pd("prefill-first")

    first = await generate(router, "disaggregate me " * 50, stream=stream)
    second = await generate(router, "and me as a chat " * 40, stream=stream, chat=True)

    assert first == (decode.pod_name, 5, "length")
    assert second == (decode.pod_name, 5, "length")
    assert await finished(prefill, "length") == 2  # one single-token prefill per request
    assert await finished(decode, "length") == 2
    assert await finished(decode, "cache_threshold") == 0


@pytest.mark.parametrize(("stream", "chat"), [(False, False), (True, False), (True, True)])
async def test_decode_first_prefills_only_what_the_decode_endpoint_lacks(pd: Any, stream: bool, chat: bool) -> None:
    prefill, decode, router = pd("decode-first")
    prompt = "a cold prompt the decode server has never seen " * 30

    cold = await generate(router, prompt, stream=stream, chat=chat)
    assert cold == (decode.pod_name, 5, "length")
    assert await finished(decode, "cache_threshold") == 1  # handed back ...
    assert await finished(prefill, "length") == 1  # ... prefilled remotely ...
    assert await finished(decode, "length") == 1  # ... and decoded with the transferred KV

    warm = await generate(router, prompt, stream=stream, chat=chat)
    assert warm == (decode.pod_name, 5, "length")
    assert await finished(decode, "cache_threshold") == 1  # the decode server had it cached: no prefill
    assert await finished(prefill, "length") == 1
    assert await finished(decode, "length") == 2


async def test_a_dead_prefill_endpoint_falls_back_to_plain_decode(pd: Any) -> None:
    prefill, decode, router = pd("prefill-first")
    prefill.stop()

    answers = [await generate(router, f"no prefill for me {i} " * 30, stream=i % 2 == 1) for i in range(4)]

    assert answers == [(decode.pod_name, 5, "length")] * 4
    assert await finished(decode, "length") == 4


# What a client might send to make a decode engine pull KV blocks from, or push them to, an address of its choice.
CLIENT_TRANSFER_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": True,
    "remote_engine_id": "client-engine",
    "remote_block_ids": [0, 1, 2],
    "remote_host": "198.51.100.7",
    "remote_port": 5600,
}


async def with_client_params(router: Any, prompt: str, *, stream: bool) -> tuple[int, str, bool]:
    """(output tokens, finish reason, whether the answer carries kv_transfer_params) of a request whose body
    has `CLIENT_TRANSFER_PARAMS`."""
    body: dict[str, Any] = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 5,
        "stream": stream,
        "kv_transfer_params": CLIENT_TRANSFER_PARAMS,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    async with aiohttp.ClientSession() as client, client.post(f"{router.base_url}/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        raw = await r.read()
    if not stream:
        answer = json.loads(raw)
        return (
            answer["usage"]["completion_tokens"],
            answer["choices"][0]["finish_reason"],
            "kv_transfer_params" in answer,
        )
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ") and line != "data: [DONE]"]
    chunks = [json.loads(e) for e in events]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    carried = any("kv_transfer_params" in c for c in chunks)
    return chunks[-1]["usage"]["completion_tokens"], reasons[-1], carried


@pytest.mark.parametrize("setup", ["pd-prefill-down", "pd-prefill-up", "no-pd"])
async def test_client_kv_transfer_params_never_reach_an_engine(
    sim_fleet: Any, routers: Callable[..., Any], tmp_path: Path, setup: str
) -> None:
    # The decode engine runs in role "both", so it honours whatever parameters reach it: with the client's
    # `do_remote_decode` it would stop after one token and answer with its own `kv_transfer_params`.
    decode = sim_fleet.start(*SIM)
    if setup == "no-pd":
        router = routers(f"{decode.host}:{decode.port}")
    else:
        prefill = sim_fleet.start(*SIM, "--role", "prefill")
        config = tmp_path / "pd.yaml"
        config.write_text(PD_CONFIG % {"mode": "prefill-first"})
        router = routers(
            f"{prefill.host}:{prefill.port};role=prefill,{decode.host}:{decode.port};role=decode", config=config
        )
        if setup == "pd-prefill-down":
            prefill.stop()

    answers = [await with_client_params(router, f"steer my KV {i} " * 30, stream=i % 2 == 1) for i in range(4)]

    assert answers == [(5, "length", False)] * 4
    assert await finished(decode, "length") == 4
    if setup == "pd-prefill-up":
        assert await finished(prefill, "length") == 4  # the router's own transfer ran
