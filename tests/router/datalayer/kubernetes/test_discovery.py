"""KubernetesDiscovery against the fake API server: the pool's endpoints follow its pods and its spec."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kvroute.router.datalayer.kubernetes.discovery import KubernetesDiscovery
from kvroute.router.datalayer.kubernetes.inferencepool import pools_path
from kvroute.router.datalayer.pool import EndpointPool, PoolChange
from tests.support import eventually, time_until

PODS = "/api/v1/namespaces/ns/pods"
POOLS = pools_path("ns")


@pytest.fixture
async def started(api: Any) -> AsyncIterator[Callable[..., Any]]:
    running: list[KubernetesDiscovery] = []

    async def start(**options: Any) -> KubernetesDiscovery:
        options = {"sync_timeout": 2.0, **options}
        discovery = KubernetesDiscovery(EndpointPool(), api.client(), namespace="ns", pool_name="llm", **options)
        running.append(discovery)
        await discovery.start()
        return discovery

    yield start
    for discovery in running:
        await discovery.stop()


def ids(discovery: KubernetesDiscovery) -> list[str]:
    return [e.id for e in discovery.pool.snapshot()]


async def test_ready_pods_of_the_pool_are_endpoints_when_start_returns(
    api: Any, make_pod: Any, make_pool: Any, started: Any
) -> None:
    api.put(POOLS, make_pool(ports=(8000, 8001)))
    api.put(PODS, make_pod("llm-0", "127.0.0.11"))
    api.put(PODS, make_pod("llm-1", "127.0.0.12", ready=False))
    api.put(PODS, make_pod("other", "127.0.0.13", labels={"app": "other"}))

    discovery = await started()

    assert ids(discovery) == ["127.0.0.11:8000", "127.0.0.11:8001"]
    assert discovery.synced
    endpoint = discovery.pool.snapshot()[0]
    assert (endpoint.pod_name, endpoint.namespace, dict(endpoint.labels)) == ("llm-0", "ns", {"app": "llm"})
    # The pool is watched by name, the pods by the pool's selector.
    assert api.queries(POOLS, watch=True)[0]["fieldSelector"] == "metadata.name=llm"
    assert api.queries(PODS, watch=False)[0]["labelSelector"] == "app=llm"


@pytest.mark.parametrize(
    "change",
    [
        lambda api, pod: api.put(PODS, pod(ready=False)),
        lambda api, pod: api.put(PODS, pod(terminating=True)),
        lambda api, pod: api.delete(PODS, "llm-1"),
        lambda api, pod: api.put(PODS, pod(labels={"app": "retired"})),
    ],
    ids=["not-ready", "terminating", "deleted", "relabelled"],
)
async def test_a_pod_that_stops_serving_leaves_the_pool_within_a_second(
    api: Any, make_pod: Any, make_pool: Any, started: Any, change: Any
) -> None:
    api.put(POOLS, make_pool())
    api.put(PODS, make_pod("llm-0", "127.0.0.11"))
    api.put(PODS, make_pod("llm-1", "127.0.0.12"))
    discovery = await started()
    removed: list[PoolChange] = []
    discovery.pool.subscribe(removed.append)
    assert ids(discovery) == ["127.0.0.11:8000", "127.0.0.12:8000"]

    change(api, lambda **kw: make_pod("llm-1", "127.0.0.12", **kw))

    took = await time_until(lambda: ids(discovery) == ["127.0.0.11:8000"], timeout=1.0)
    assert took < 1.0
    assert [[e.id for e in c.removed] for c in removed] == [["127.0.0.12:8000"]]


async def test_a_pod_that_becomes_ready_joins_and_a_relabelled_one_is_updated(
    api: Any, make_pod: Any, make_pool: Any, started: Any
) -> None:
    api.put(POOLS, make_pool())
    api.put(PODS, make_pod("llm-0", "127.0.0.11", ready=False))
    discovery = await started()
    assert ids(discovery) == []

    api.put(PODS, make_pod("llm-0", "127.0.0.11"))
    await eventually(lambda: ids(discovery) == ["127.0.0.11:8000"], timeout=1.0)
    api.put(PODS, make_pod("llm-0", "127.0.0.11", labels={"app": "llm", "llm-d.ai/role": "prefill"}))

    await eventually(lambda: discovery.pool.snapshot()[0].labels.get("llm-d.ai/role") == "prefill", timeout=1.0)


async def test_a_new_selector_re_selects_the_pods(api: Any, make_pod: Any, make_pool: Any, started: Any) -> None:
    api.put(POOLS, make_pool(match_labels={"app": "llm", "model": "a"}))
    api.put(PODS, make_pod("a-0", "127.0.0.11", labels={"app": "llm", "model": "a"}))
    api.put(PODS, make_pod("b-0", "127.0.0.12", labels={"app": "llm", "model": "b"}))
    discovery = await started()
    assert ids(discovery) == ["127.0.0.11:8000"]

    api.put(POOLS, make_pool(match_labels={"app": "llm", "model": "b"}))

    await eventually(lambda: ids(discovery) == ["127.0.0.12:8000"], timeout=1.0)
    assert api.queries(PODS, watch=False)[-1]["labelSelector"] == "app=llm,model=b"
    await eventually(lambda: api.open_watches(PODS) == 1)  # the old selector's watch is closed


async def test_new_target_ports_recompute_the_endpoints_without_relisting_pods(
    api: Any, make_pod: Any, make_pool: Any, started: Any
) -> None:
    api.put(POOLS, make_pool(ports=(8000,)))
    api.put(PODS, make_pod("llm-0", "127.0.0.11"))
    discovery = await started()

    api.put(POOLS, make_pool(ports=(8000, 9000)))

    await eventually(lambda: ids(discovery) == ["127.0.0.11:8000", "127.0.0.11:9000"], timeout=1.0)
    assert len(api.queries(PODS, watch=False)) == 1


async def test_without_the_pool_there_are_no_endpoints_until_it_is_created(
    api: Any, make_pod: Any, make_pool: Any, started: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api.put(PODS, make_pod("llm-0", "127.0.0.11"))

    with caplog.at_level(logging.WARNING):
        discovery = await started()

    assert discovery.synced and ids(discovery) == []
    assert "InferencePool ns/llm does not exist (yet); no endpoints" in caplog.text
    api.put(POOLS, make_pool())
    await eventually(lambda: ids(discovery) == ["127.0.0.11:8000"], timeout=1.0)

    api.delete(POOLS, "llm")

    await eventually(lambda: ids(discovery) == [], timeout=1.0)
    assert discovery.spec is None
    await eventually(lambda: api.open_watches(PODS) == 0)


async def test_an_unreadable_pool_spec_keeps_the_last_good_one(
    api: Any, make_pod: Any, make_pool: Any, started: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api.put(POOLS, make_pool())
    api.put(PODS, make_pod("llm-0", "127.0.0.11"))
    discovery = await started()
    broken = make_pool()
    broken["spec"]["targetPorts"] = [{"number": 70000}]

    with caplog.at_level(logging.ERROR):
        api.put(POOLS, broken)
        await eventually(lambda: "keeping the last good spec" in caplog.text)

    assert "spec.targetPorts[0].number must be an integer in 1-65535" in caplog.text
    assert ids(discovery) == ["127.0.0.11:8000"]


async def test_a_pool_unreadable_from_the_start_gives_no_endpoints_without_waiting(
    api: Any, make_pod: Any, make_pool: Any, started: Any
) -> None:
    broken = make_pool()
    del broken["spec"]["targetPorts"]
    api.put(POOLS, broken)
    api.put(PODS, make_pod("llm-0", "127.0.0.11"))

    discovery = await started(sync_timeout=5.0)

    assert discovery.synced and ids(discovery) == [] and discovery.spec is None
    api.put(POOLS, make_pool())
    await eventually(lambda: ids(discovery) == ["127.0.0.11:8000"], timeout=1.0)


async def test_a_dropped_pod_watch_catches_up_without_losing_changes(
    api: Any, make_pod: Any, make_pool: Any, started: Any
) -> None:
    api.put(POOLS, make_pool())
    api.put(PODS, make_pod("llm-0", "127.0.0.11"))
    discovery = await started()

    api.drop_watches()
    api.delete(PODS, "llm-0")
    api.put(PODS, make_pod("llm-1", "127.0.0.12"))

    await eventually(lambda: ids(discovery) == ["127.0.0.12:8000"], timeout=1.0)


async def test_start_gives_up_waiting_when_the_api_server_refuses(
    api: Any, started: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api.fail_next = [403] * 100

    with caplog.at_level(logging.WARNING):
        discovery = await started(sync_timeout=0.3)

    assert not discovery.synced and ids(discovery) == []
    assert "does the router's service account have get/list/watch on it?" in caplog.text
    assert "InferencePool ns/llm and its pods were not listed within 0.3s" in caplog.text


async def test_stop_closes_every_watch(api: Any, make_pod: Any, make_pool: Any) -> None:
    api.put(POOLS, make_pool())
    api.put(PODS, make_pod("llm-0", "127.0.0.11"))
    discovery = KubernetesDiscovery(EndpointPool(), api.client(), namespace="ns", pool_name="llm")
    await discovery.start()
    await eventually(lambda: api.open_watches(PODS) == 1 and api.open_watches(POOLS) == 1)

    await discovery.stop()

    await eventually(lambda: api.open_watches(PODS) == 0 and api.open_watches(POOLS) == 0)
