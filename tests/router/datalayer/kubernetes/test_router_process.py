"""`kvroute router --discovery kubernetes` as a process, against the fake API server and one simulator.

The process is what the operator's Deployment runs; here its kubeconfig points at the fake API server. The
pod's `status.podIP` is the simulator's 127.0.0.x address: nothing outside 127.0.0.0/8 is ever dialled.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from kvroute.router.datalayer.kubernetes.configmap import CONFIG_KEY, configmaps_path
from kvroute.router.datalayer.kubernetes.inferencepool import pools_path
from tests.support import Processes, eventually, free_port, kvroute_command, time_until

pytestmark = pytest.mark.integration

PODS = "/api/v1/namespaces/ns/pods"


@pytest.fixture
def router_process(api: Any, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """`start(*args)`: `kvroute router ARGS` against the fake API server; its URL. Its output is printed at the end
    (pytest shows it when the test failed)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "current-context": "fake",
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "router", "namespace": "ns"}}],
                "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
                "users": [{"name": "router", "user": {"token": "router-token"}}],
            }
        )
    )

    with Processes(show_output=True) as processes:

        def start(*args: str) -> str:
            port = free_port()
            argv = kvroute_command("router", "--port", str(port), "--kubeconfig", str(kubeconfig), *args)
            processes.start(f"router-{port}", argv)
            return f"http://127.0.0.1:{port}"

        yield start


async def readiness(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    with contextlib.suppress(aiohttp.ClientError):
        async with session.get(f"{url}/readyz") as response:
            return response.status, await response.json()
    return 0, {}


async def test_the_router_follows_the_pool_and_reloads_its_config_map(
    api: Any, make_pod: Any, make_pool: Any, sim_fleet: Any, router_process: Any
) -> None:
    sim = sim_fleet.start("--model", "fake-model")
    assert ipaddress.IPv4Address(sim.host) in ipaddress.IPv4Network("127.0.0.0/8")
    api.token = "router-token"
    api.put(pools_path("ns"), make_pool(ports=(sim.port,)))
    api.put(PODS, make_pod("llm-0", sim.host))
    api.put(configmaps_path("ns"), {"metadata": {"name": "llm-router"}, "data": {CONFIG_KEY: DEFAULT_CONFIG_TEXT}})

    url = router_process("--pool-name", "llm", "--config-configmap", "llm-router", "--scrape-interval", "20ms")

    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            status, body = await readiness(session, url)
            return status == 200 and body["endpoints"] == 1

        await eventually(ready, 20, interval=0.01)
        async with session.post(
            f"{url}/v1/completions", json={"model": "fake-model", "prompt": "hello", "max_tokens": 2}
        ) as response:
            assert response.status == 200
            assert response.headers.get("x-inference-pod") is not None

        api.delete(PODS, "llm-0")

        async def no_endpoints() -> bool:
            status, body = await readiness(session, url)
            return status == 503 and "no endpoints" in body["error"]["message"]

        assert await time_until(no_endpoints, 1.0) < 1.0

        edited = DEFAULT_CONFIG_TEXT.replace("weight: 2\n", "weight: 5\n", 1)
        api.put(configmaps_path("ns"), {"metadata": {"name": "llm-router"}, "data": {CONFIG_KEY: edited}})

        async def reloaded() -> bool:
            async with session.get(f"{url}/metrics") as response:
                return 'kvroute_config_reloads_total{result="success"} 1.0' in await response.text()

        await eventually(reloaded, 2.0, interval=0.01)
