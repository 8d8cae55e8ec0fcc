"""The InferenceObjective watch against the fake API server: the pool's objective -> priority mapping follows the
objectives as they are created, changed and deleted, and reaches subscribers; no CRD means no objectives."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from kvroute.router.datalayer.kubernetes.discovery import KubernetesDiscovery
from kvroute.router.datalayer.kubernetes.inferencepool import pools_path
from kvroute.router.datalayer.kubernetes.objectives import ObjectiveWatcher, objectives_path
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.framework.objectives import LayeredObjectivePriorities, StaticObjectivePriorities
from tests.support import eventually

OBJECTIVES = objectives_path("ns")


def objective(name: str, pool: str = "llm", priority: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"poolRef": {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": pool}}
    if priority is not None:
        spec["priority"] = priority
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferenceObjective",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": spec,
    }


@pytest.fixture
async def watcher(api: Any) -> AsyncIterator[ObjectiveWatcher]:
    client = api.client()
    watching = ObjectiveWatcher(client, namespace="ns", pool_name="llm")
    watching.start()
    yield watching
    await watching.stop()
    await client.close()


def test_the_path_is_the_upstream_group_and_version() -> None:
    assert OBJECTIVES == "/apis/inference.networking.x-k8s.io/v1alpha2/namespaces/ns/inferenceobjectives"


async def test_the_mapping_follows_the_pools_objectives(api: Any, watcher: ObjectiveWatcher) -> None:
    api.put(OBJECTIVES, objective("chat", priority=10))
    api.put(OBJECTIVES, objective("other-pool", pool="other", priority=99))
    seen: list[Mapping[str, int]] = []
    watcher.subscribe(lambda priorities: seen.append(dict(priorities)))

    await eventually(lambda: watcher.priorities() == {"chat": 10}, timeout=5)
    api.put(OBJECTIVES, objective("batch"))  # no priority: 0
    await eventually(lambda: watcher.priorities() == {"chat": 10, "batch": 0}, timeout=5)
    api.put(OBJECTIVES, objective("chat", priority=-5))
    await eventually(lambda: watcher.priority_of("chat") == -5, timeout=5)
    api.delete(OBJECTIVES, "batch")
    await eventually(lambda: watcher.priorities() == {"chat": -5}, timeout=5)

    assert watcher.synced
    assert watcher.priority_of("batch") is None and watcher.priority_of("other-pool") is None
    assert seen[-3:] == [{"chat": 10, "batch": 0}, {"chat": -5, "batch": 0}, {"chat": -5}]
    # The objectives of another pool change nothing, and tell no subscriber.
    before = len(seen)
    api.put(OBJECTIVES, objective("other-pool", pool="other", priority=1))
    api.put(OBJECTIVES, objective("marker", priority=3))
    await eventually(lambda: watcher.priority_of("marker") == 3, timeout=5)
    assert seen[before:] == [{"chat": -5, "marker": 3}]


async def test_the_cluster_answers_first_and_the_configuration_fills_in(api: Any, watcher: ObjectiveWatcher) -> None:
    api.put(OBJECTIVES, objective("chat", priority=10))
    await eventually(lambda: watcher.priority_of("chat") == 10, timeout=5)
    layered = LayeredObjectivePriorities(watcher, StaticObjectivePriorities({"chat": 1, "batch": -1}))

    assert (layered.priority_of("chat"), layered.priority_of("batch"), layered.priority_of("x")) == (10, -1, None)


async def test_each_change_is_logged_once(
    api: Any, watcher: ObjectiveWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kvroute.router.datalayer.kubernetes.objectives")
    api.put(OBJECTIVES, objective("chat", priority=10))
    api.put(OBJECTIVES, objective("batch", priority=-1))
    await eventually(lambda: watcher.priorities() == {"chat": 10, "batch": -1}, timeout=5)
    api.delete(OBJECTIVES, "chat")
    api.delete(OBJECTIVES, "batch")
    await eventually(lambda: watcher.priorities() == {}, timeout=5)

    lines = [r.getMessage() for r in caplog.records if r.name.endswith("objectives")]
    assert lines[-1] == "InferenceObjectives of InferencePool ns/llm: none"
    assert "InferenceObjectives of InferencePool ns/llm: batch=-1, chat=10" in lines
    assert len(lines) == len(set(lines))


async def test_without_the_crd_the_mapping_stays_empty_and_the_watch_retries(api: Any) -> None:
    api.fail_next = [404, 404]
    client = api.client()
    watching = ObjectiveWatcher(client, namespace="ns", pool_name="llm")
    watching.reflector._backoff_initial = 0.01  # the test need not wait for the production backoff
    watching.start()
    try:
        api.put(OBJECTIVES, objective("chat", priority=4))
        await eventually(lambda: watching.priorities() == {"chat": 4}, timeout=5)
        assert watching.reflector.lists == 1  # two failed lists, then the one that worked
    finally:
        await watching.stop()
        await client.close()


async def test_kubernetes_discovery_runs_the_watch_without_waiting_for_it(api: Any, make_pool: Any) -> None:
    api.put(pools_path("ns"), make_pool())
    api.put(OBJECTIVES, objective("chat", priority=2))
    discovery = KubernetesDiscovery(EndpointPool(), api.client(), namespace="ns", pool_name="llm", sync_timeout=2.0)
    await discovery.start()
    try:
        await eventually(lambda: discovery.objectives.priorities() == {"chat": 2}, timeout=5)
        watches = await eventually(lambda: api.queries(OBJECTIVES, watch=True), timeout=5)
        assert watches[0].get("fieldSelector") is None  # a poolRef is not selectable
    finally:
        await discovery.stop()
    await eventually(lambda: api.open_watches(OBJECTIVES) == 0)  # the server sees the watch closed
