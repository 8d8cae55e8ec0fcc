"""kvroute as the Endpoint Picker of a real Envoy, configured from docs/envoy/kvroute-gateway.yaml like a GIE
gateway (ORIGINAL_DST cluster reading `x-gateway-destination-endpoint`, ext_proc FULL_DUPLEX_STREAMED over TLS), in
front of four `kvroute sim serve` processes. Everything listens on 127.0.0.0/8 and is stopped by PID. With CI=true a
missing Envoy fails these tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kvroute.router.config.recommended import recommended_config_text
from tests.support import free_port

pytestmark = pytest.mark.integration

MODEL = "kvroute-test"
SIM_ARGS = ("--model", MODEL, "--time-scale", "0.02", "--max-model-len", "131072")
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
def prefix_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("extproc") / "prefix.yaml"
    path.write_text(PREFIX_CONFIG)
    return path


@pytest.fixture
def start_router(sims: list[Any], extproc_router: Callable[..., Any]) -> Callable[..., Any]:
    """`kvroute router --mode ext-proc` over the simulators (see the `extproc_router` fixture)."""
    endpoints = ",".join(f"{s.host}:{s.port}" for s in sims)
    return lambda *args, launch=True: extproc_router(endpoints, *args, launch=launch)


@pytest.fixture
def start_envoy(envoy_gateway: Callable[..., Any], sims: list[Any]) -> Callable[..., Any]:
    """Envoy in front of the router, its pool the simulators (see the `envoy_gateway` fixture)."""
    pool = [(s.host, s.port) for s in sims]
    return lambda router, edit=None, **options: envoy_gateway(router, pool, edit, **options)


async def complete(
    session: aiohttp.ClientSession, url: str, prompt: str, headers: dict[str, str] | None = None, **body: Any
) -> tuple[int, str | None, Any]:
    payload = {"model": MODEL, "prompt": prompt, "max_tokens": 3, **body}
    async with session.post(f"{url}/v1/completions", json=payload, headers=headers or {}) as response:
        text = await response.text()
        return response.status, response.headers.get("x-inference-pod"), text


def pods(sims: list[Any]) -> set[str]:
    return {s.pod_name for s in sims}


async def test_prefix_affinity_holds_through_envoy(
    start_router: Any, start_envoy: Any, prefix_config: Path, sims: list[Any]
) -> None:
    router = start_router("--config", str(prefix_config))
    gateway = start_envoy(router)
    shared = "You are a careful assistant who answers in French. " * 40
    async with aiohttp.ClientSession() as session:
        answers = [await complete(session, gateway.base_url, shared + f"Question {i}?") for i in range(8)]
        others = [await complete(session, gateway.base_url, f"{i} " * 600 + "unrelated") for i in range(6)]

    assert [status for status, _, _ in answers + others] == [200] * 14
    assert len({pod for _, pod, _ in answers}) == 1  # one prefix, one pod
    assert len({pod for _, pod, _ in others}) >= 3  # new prefixes spread (no-hit LRU)
    assert {pod for _, pod, _ in answers + others} <= pods(sims)


async def test_streamed_responses_pass_chunk_by_chunk_and_are_counted(start_router: Any, start_envoy: Any) -> None:
    router = start_router()
    gateway = start_envoy(router)
    payload = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway.base_url}/v1/completions", json=payload) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in response.content if line.startswith(b"data: ")]

    texts = [json.loads(e[6:])["choices"][0]["text"] for e in events if e.strip() != b"data: [DONE]"]
    assert len(texts) == 12
    assert events[-1].strip() == b"data: [DONE]"
    await asyncio.sleep(0.2)
    assert router.metric('kvroute_requests_total{api="completions",code="200"}') == 1
    assert router.metric("kvroute_requests_in_flight") == 0


async def test_a_client_cannot_choose_its_endpoint(
    start_router: Any, start_envoy: Any, prefix_config: Path, sims: list[Any]
) -> None:
    router = start_router("--config", str(prefix_config))
    gateway = start_envoy(router)
    prompt = "Summarise the following report in one line. " * 30
    async with aiohttp.ClientSession() as session:
        first = await complete(session, gateway.base_url, prompt)
        steered = [
            await complete(session, gateway.base_url, prompt, {"x-gateway-destination-endpoint": target})
            for target in [f"{s.host}:{s.port}" for s in sims] + ["127.0.0.1:9"]
        ]

    assert first[0] == 200
    assert {(status, pod) for status, pod, _ in steered} == {(200, first[1])}


@pytest.mark.parametrize(
    ("fail_open", "body_mode", "served"),
    [
        (True, "BUFFERED", True),
        (False, "BUFFERED", False),
        (False, "FULL_DUPLEX_STREAMED", False),
        # Envoy 1.40 ignores failure_mode_allow once request bodies stream to the processor: FailOpen needs BUFFERED.
        (True, "FULL_DUPLEX_STREAMED", False),
    ],
)
async def test_with_the_router_down_fail_open_serves_and_fail_close_refuses(
    start_router: Any, start_envoy: Any, sims: list[Any], fail_open: bool, body_mode: str, served: bool
) -> None:
    router = start_router(launch=False)  # its ports are reserved, nothing listens
    gateway = start_envoy(router, fail_open=fail_open, request_body_mode=body_mode)
    async with aiohttp.ClientSession() as session:
        answers = [
            await complete(session, gateway.base_url, f"hello {i}", {"x-gateway-destination-endpoint": "127.0.0.1:9"})
            for i in range(4)
        ]

    if served:
        assert [status for status, _, _ in answers] == [200] * 4
        assert len({pod for _, pod, _ in answers}) == 4  # round-robin over the pool, the client's header ignored
    else:
        assert {status for status, _, _ in answers} == {500}


async def test_the_router_restarts_under_load(start_router: Any, start_envoy: Any) -> None:
    router = start_router()
    gateway = start_envoy(router)
    statuses: Counter[int] = Counter()
    restarted = asyncio.Event()
    deadline = time.monotonic() + 40

    async def load(session: aiohttp.ClientSession, worker: int) -> None:
        for i in range(10_000):
            if restarted.is_set() or time.monotonic() > deadline:
                return
            try:
                status, _, _ = await complete(session, gateway.base_url, f"worker {worker} request {i}")
            except aiohttp.ClientError:
                status = 0
            statuses[status] += 1

    async with aiohttp.ClientSession() as session:
        workers = [asyncio.create_task(load(session, w)) for w in range(6)]
        await asyncio.sleep(1.0)
        before = dict(statuses)
        await asyncio.to_thread(router.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(router.start)
        await asyncio.sleep(1.0)
        restarted.set()
        await asyncio.gather(*workers)
        after = [await complete(session, gateway.base_url, f"after {i}") for i in range(10)]

    assert before.get(200, 0) > 10 and set(before) == {200}
    assert set(statuses) <= {200, 500}  # FailClose while it was down, nothing else
    assert [status for status, _, _ in after] == [200] * 10
    await asyncio.sleep(0.2)
    assert router.metric("kvroute_requests_in_flight") == 0


@pytest.mark.parametrize("body_mode", ["FULL_DUPLEX_STREAMED", "BUFFERED"])
async def test_a_220_kb_prompt_is_routed_and_forwarded_whole(
    start_router: Any, start_envoy: Any, body_mode: str
) -> None:
    router = start_router()
    gateway = start_envoy(router, request_body_mode=body_mode)
    prompt = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(4200))[: 220 * 1024]
    async with aiohttp.ClientSession() as session:
        status, pod, text = await complete(session, gateway.base_url, prompt)

    assert status == 200, text
    assert pod is not None
    assert json.loads(text)["usage"]["prompt_tokens"] > 40_000


# What a client might send to make an engine pull KV blocks from, or push them to, an address of its choice.
CLIENT_TRANSFER_PARAMS = {
    "do_remote_prefill": True,
    "do_remote_decode": True,
    "remote_engine_id": "client-engine",
    "remote_block_ids": [0, 1, 2],
    "remote_host": "127.0.0.99",
    "remote_port": 5600,
}


@pytest.mark.parametrize("body_mode", ["FULL_DUPLEX_STREAMED", "BUFFERED"])
async def test_client_kv_transfer_params_never_reach_a_model_server(
    start_router: Any, start_envoy: Any, body_mode: str
) -> None:
    # The simulators run in role "both", so they honour whatever parameters reach them: with the client's
    # `do_remote_decode` one would stop after one token and answer with its own `kv_transfer_params`.
    router = start_router()
    gateway = start_envoy(router, request_body_mode=body_mode)
    async with aiohttp.ClientSession() as session:
        answers = [
            await complete(
                session,
                gateway.base_url,
                f"steer my KV {i} " * 30,
                max_tokens=5,
                kv_transfer_params=CLIENT_TRANSFER_PARAMS,
            )
            for i in range(3)
        ]

    assert [status for status, _, _ in answers] == [200] * 3, answers
    served = [json.loads(text) for _, _, text in answers]
    assert [
        (a["usage"]["completion_tokens"], a["choices"][0]["finish_reason"], "kv_transfer_params" in a) for a in served
    ] == [(5, "length", False)] * 3


async def test_the_subset_hint_limits_the_pick(start_router: Any, start_envoy: Any, sims: list[Any]) -> None:
    allowed = sims[2]

    def hint(config: dict[str, Any]) -> None:
        from kvroute.bench.envoy import http_filters

        http_filters(config).insert(
            0,
            {
                "name": "envoy.filters.http.set_metadata",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
                    "metadata": [
                        {
                            "metadata_namespace": "envoy.lb.subset_hint",
                            "value": {"x-gateway-destination-endpoint-subset": [f"{allowed.host}:{allowed.port}"]},
                        }
                    ],
                },
            },
        )

    router = start_router()
    gateway = start_envoy(router, hint)
    async with aiohttp.ClientSession() as session:
        answers = [await complete(session, gateway.base_url, f"question {i} " * 50) for i in range(6)]

    assert {(status, pod) for status, pod, _ in answers} == {(200, allowed.pod_name)}


async def test_light_mode_through_envoy(start_router: Any, start_envoy: Any) -> None:
    router = start_router("--response-mode", "light")
    gateway = start_envoy(router, light=True)
    async with aiohttp.ClientSession() as session:
        plain = [await complete(session, gateway.base_url, f"light {i}") for i in range(3)]
        stream = await complete(session, gateway.base_url, "light stream", stream=True, max_tokens=5)

    assert [status for status, _, _ in plain] == [200] * 3
    assert stream[0] == 200 and stream[2].count("data: ") == 6  # five tokens and [DONE]
    await asyncio.sleep(0.3)
    assert router.metric('kvroute_requests_total{api="completions",code="200"}') == 4
    assert router.metric("kvroute_requests_in_flight") == 0


async def test_both_front_doors_share_one_router(start_router: Any, start_envoy: Any, prefix_config: Path) -> None:
    router = start_router("--config", str(prefix_config), "--mode", "both", launch=False)
    proxy_port = free_port(router.host)
    router.argv.extend(["--port", str(proxy_port)])
    router.start()
    gateway = start_envoy(router)
    prompt = "Translate the following paragraph into German, keeping the tone. " * 30
    async with aiohttp.ClientSession() as session:
        direct = await complete(session, f"http://{router.host}:{proxy_port}", prompt + "First.")
        via_envoy = [await complete(session, gateway.base_url, prompt + f"Then {i}.") for i in range(3)]

    assert direct[0] == 200
    assert {(status, pod) for status, pod, _ in via_envoy} == {(200, direct[1])}  # one prefix index for both doors


PRECISE_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: precise-prefix-cache-scorer
    # These simulators publish no KV events: only the speculative entries (10 s) say where a prompt went.
    parameters: {kvEvents: {endpointPort: 9}, tokenizer: engine, speculativeTTL: 10s}
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: precise-prefix-cache-scorer, weight: 1}
      - {pluginRef: max-score-picker}
"""


async def test_the_precise_scorer_prepares_requests_through_envoy(
    start_router: Any, start_envoy: Any, tmp_path: Path
) -> None:
    config = tmp_path / "precise.yaml"
    config.write_text(PRECISE_CONFIG)
    router = start_router("--config", str(config))
    gateway = start_envoy(router)
    prompts = [f"Topic {topic}: " + f"what is known about {topic}? " * 20 for topic in ("salt", "iron", "oak", "elk")]
    async with aiohttp.ClientSession() as session:
        first = [await complete(session, gateway.base_url, p) for p in prompts]
        again = [await complete(session, gateway.base_url, p) for p in prompts]

    assert [status for status, _, _ in first + again] == [200] * 8
    # Tokenized on the simulators (/tokenize) before scheduling, then held on the pick: each prompt stays put.
    assert [pod for _, pod, _ in again] == [pod for _, pod, _ in first]
    assert router.metric("kvroute_request_preparation_failures_total") == 0
    assert router.metric('kvroute_scheduler_plugin_duration_seconds_count{extension_point="Preparer.prepare"') == 8


async def test_the_recommended_predicted_latency_configuration_keeps_a_prefix_on_one_pod_through_envoy(
    start_router: Any, start_envoy: Any, sims: list[Any], tmp_path: Path
) -> None:
    config = tmp_path / "recommended.yaml"
    config.write_text(recommended_config_text())  # predicted-latency-scorer, as users run it
    router = start_router("--config", str(config))
    gateway = start_envoy(router)
    shared = "You are a careful assistant who answers in French. " * 60
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        answers = [await complete(session, gateway.base_url, shared + f"Question {i}?") for i in range(8)]

    assert [status for status, _, _ in answers] == [200] * 8
    assert len({pod for _, pod, _ in answers}) == 1, answers
    assert {pod for _, pod, _ in answers} <= pods(sims)


# GIE conformance mode: kvroute in lwepp's place, as the conformance suite drives it.

SELECT = "test-epp-endpoint-selection"
SERVED = "x-conformance-test-served-endpoint"


def report_served(config: dict[str, Any]) -> None:
    """Makes the gateway tell the router which endpoint served, as the Endpoint Picker protocol asks: the router
    stamps the upstream's address on the response (`%UPSTREAM_HOST%`), a filter between ext_proc and the router
    moves it into `envoy.lb` / `x-gateway-destination-endpoint-served`, which ext_proc forwards."""
    from kvroute.bench.envoy import http_filters

    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routed = manager["route_config"]["virtual_hosts"][0]["routes"][0]
    routed["response_headers_to_add"] = [
        {
            "header": {"key": "x-gateway-destination-endpoint-served", "value": "%UPSTREAM_HOST%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
    filters = http_filters(config)
    filters.insert(
        len(filters) - 1,  # just before the router filter: the first to see the response
        {
            "name": "envoy.filters.http.header_to_metadata",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
                "response_rules": [
                    {
                        "header": "x-gateway-destination-endpoint-served",
                        "on_header_present": {
                            "metadata_namespace": "envoy.lb",
                            "key": "x-gateway-destination-endpoint-served",
                            "type": "STRING",
                        },
                        "remove": True,
                    }
                ],
            },
        },
    )


async def post(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    path: str = "/v1/completions",
    prompt: str = "Write as if you were a critic: San Francisco",
) -> tuple[int, str | None, str | None]:
    """(status, the simulator that answered, the served endpoint reported) of one completion request."""
    payload = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    async with session.post(f"{url}{path}", json=payload, headers=headers) as response:
        await response.read()
        return response.status, response.headers.get("x-inference-pod"), response.headers.get(SERVED)


async def test_conformance_mode_through_envoy_serves_from_the_selected_pod_and_reports_it(
    start_router: Any, start_envoy: Any, sims: list[Any]
) -> None:
    router = start_router("--gie-conformance")
    gateway = start_envoy(router, report_served)
    # Scheduled requests, and requests like the suite's own (a path no model server knows: passed through).
    paths = {"/v1/completions": 200, "/conformance-test": 404}
    async with aiohttp.ClientSession() as session:
        for sim in sims:
            for path, expected in paths.items():
                answers = [await post(session, gateway.base_url, {SELECT: sim.host}, path) for _ in range(3)]
                assert set(answers) == {(expected, sim.pod_name, f"{sim.host}:{sim.port}")}, (sim.host, path)
        two = [await post(session, gateway.base_url, {SELECT: f"{sims[1].host},{sims[3].host}"}) for _ in range(8)]
        none = await post(session, gateway.base_url, {SELECT: "127.0.0.1"})

    assert {status for status, _, _ in two} == {200}
    assert {pod for _, pod, _ in two} <= {sims[1].pod_name, sims[3].pod_name}
    assert none[0] == 503  # no endpoint of the pool selected


async def test_conformance_mode_through_a_gateway_that_does_not_report_says_so(
    start_router: Any, start_envoy: Any, sims: list[Any]
) -> None:
    router = start_router("--gie-conformance")
    gateway = start_envoy(router)  # the template: nothing sets x-gateway-destination-endpoint-served
    async with aiohttp.ClientSession() as session:
        answer = await post(session, gateway.base_url, {SELECT: sims[0].host})

    # Envoy forwards no envoy.lb namespace at all: it keeps no ext_proc dynamic metadata unless told to receive it.
    assert answer == (200, sims[0].pod_name, "fail: missing envoy lb metadata")


async def test_without_conformance_mode_the_selection_header_steers_nothing(
    start_router: Any, start_envoy: Any, prefix_config: Path, sims: list[Any]
) -> None:
    router = start_router("--config", str(prefix_config))
    gateway = start_envoy(router, report_served)
    async with aiohttp.ClientSession() as session:
        answers = [
            await post(session, gateway.base_url, {SELECT: sims[0].host}, prompt=f"{i} " * 300 + "unrelated")
            for i in range(8)
        ]

    assert {(status, served) for status, _, served in answers} == {(200, None)}
    assert len({pod for _, pod, _ in answers}) >= 3  # new prefixes spread (no-hit LRU), the header ignored
