"""The configuration ConfigMap: read at startup, hot-reloaded on edits, a bad edit keeps the old one serving."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.kubernetes.configmap import (
    CONFIG_KEY,
    ConfigMapError,
    configmaps_path,
    read_config_text,
)
from kvroute.router.datalayer.kubernetes.discovery import KubernetesDiscovery
from kvroute.router.datalayer.kubernetes.startup import connect
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.observability import RouterMetrics
from kvroute.router.plugins.registry import REGISTRY
from tests.support import eventually

CONFIGMAPS = configmaps_path("ns")
EDITED = DEFAULT_CONFIG_TEXT.replace("weight: 2\n", "weight: 5\n", 1)
REJECTED = DEFAULT_CONFIG_TEXT.replace("- type: queue-scorer", "- type: no-such-scorer", 1)


def config_map(text: str | None, name: str = "llm-router") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns"}, "data": {} if text is None else {CONFIG_KEY: text}}


def reloads(metrics: RouterMetrics, result: str) -> float:
    return metrics.registry.get_sample_value("kvroute_config_reloads_total", {"result": result}) or 0.0


def queue_weight(holder: ConfigHolder) -> float | None:
    profile = holder.current.document.scheduling_profiles[0]
    return next(p.weight for p in profile.plugins if p.plugin_ref == "queue-scorer")


class Router:
    def __init__(self) -> None:
        self.metrics = RouterMetrics()
        self.holder = ConfigHolder.load(REGISTRY, DEFAULT_CONFIG_TEXT, metrics=self.metrics)


@pytest.fixture
async def router(api: Any) -> AsyncIterator[Router]:
    api.put(CONFIGMAPS, config_map(DEFAULT_CONFIG_TEXT))
    router = Router()
    discovery = KubernetesDiscovery(
        EndpointPool(),
        api.client(),
        namespace="ns",
        pool_name="llm",
        holder=router.holder,
        config_map="llm-router",
        applied_config=DEFAULT_CONFIG_TEXT,
        metrics=router.metrics,
    )
    await discovery.start()
    try:
        yield router
    finally:
        await discovery.stop()


async def test_the_document_at_startup_is_not_reloaded_again(api: Any, router: Router) -> None:
    await eventually(lambda: api.open_watches(CONFIGMAPS) == 1)

    assert reloads(router.metrics, "success") == reloads(router.metrics, "failure") == 0
    assert api.queries(CONFIGMAPS, watch=True)[0]["fieldSelector"] == "metadata.name=llm-router"


async def test_an_edit_is_hot_reloaded(api: Any, router: Router) -> None:
    before = router.holder.current
    assert queue_weight(router.holder) == 2

    api.put(CONFIGMAPS, config_map(EDITED))

    await eventually(lambda: router.holder.current is not before, timeout=1.0)
    assert queue_weight(router.holder) == 5
    assert reloads(router.metrics, "success") == 1


async def test_a_rejected_edit_keeps_the_old_configuration_and_is_counted_once(
    api: Any, router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    before = router.holder.current

    with caplog.at_level(logging.ERROR):
        api.put(CONFIGMAPS, config_map(REJECTED))
        await eventually(lambda: reloads(router.metrics, "failure") == 1, timeout=1.0)
        api.put(CONFIGMAPS, {**config_map(REJECTED), "binaryData": {}})
        await asyncio.sleep(0.1)

    assert router.holder.current is before
    assert reloads(router.metrics, "failure") == 1
    assert "configuration in ConfigMap llm-router rejected, keeping the current configuration" in caplog.text
    assert "no-such-scorer" in caplog.text


async def test_a_missing_key_or_a_deleted_config_map_keep_the_configuration(
    api: Any, router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    before = router.holder.current

    with caplog.at_level(logging.WARNING):
        api.put(CONFIGMAPS, config_map(None))
        await eventually(lambda: reloads(router.metrics, "failure") == 1, timeout=1.0)
        api.delete(CONFIGMAPS, "llm-router")
        await eventually(lambda: "ConfigMap llm-router is gone" in caplog.text, timeout=1.0)

    assert "ConfigMap llm-router has no key 'config.yaml' in data" in caplog.text
    assert router.holder.current is before

    api.put(CONFIGMAPS, config_map(EDITED))
    await eventually(lambda: queue_weight(router.holder) == 5, timeout=1.0)


async def test_read_config_text_fetches_the_key(api: Any) -> None:
    api.put(CONFIGMAPS, config_map("a: 1\n"))
    api.put(CONFIGMAPS, config_map(None, name="empty"))

    async with api.client() as client:
        assert await read_config_text(client, "ns", "llm-router") == "a: 1\n"
        with pytest.raises(ConfigMapError, match=re.escape("ConfigMap empty has no key 'config.yaml' in data")):
            await read_config_text(client, "ns", "empty")


def kubeconfig_for(api: Any, path: Path, namespace: str | None = "ns") -> str:
    context: dict[str, Any] = {"cluster": "fake", "user": "router"}
    if namespace:
        context["namespace"] = namespace
    document = {
        "current-context": "fake",
        "contexts": [{"name": "fake", "context": context}],
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "users": [{"name": "router", "user": {"token": "t"}}],
    }
    path.write_text(yaml.safe_dump(document))
    return str(path)


async def test_connect_waits_for_a_config_map_that_does_not_exist_yet(api: Any, tmp_path: Path) -> None:
    kubeconfig = kubeconfig_for(api, tmp_path / "kubeconfig")
    asyncio.get_running_loop().call_later(0.3, api.put, CONFIGMAPS, config_map("late: true\n"))

    source = await asyncio.to_thread(
        connect, pool_name="llm", kubeconfig=kubeconfig, config_map="llm-router", startup_timeout=5
    )

    assert (source.namespace, source.config_text) == ("ns", "late: true\n")


async def test_connect_fails_at_once_when_refused(api: Any, tmp_path: Path) -> None:
    kubeconfig = kubeconfig_for(api, tmp_path / "kubeconfig")
    api.fail_next = [403]

    with pytest.raises(ConfigMapError, match="cannot read ConfigMap ns/llm-router: HTTP 403"):
        await asyncio.to_thread(connect, pool_name="llm", kubeconfig=kubeconfig, config_map="llm-router")

    assert len(api.requests) == 1


async def test_connect_takes_the_namespace_from_the_flag_first(api: Any, tmp_path: Path) -> None:
    kubeconfig = kubeconfig_for(api, tmp_path / "kubeconfig")

    source = await asyncio.to_thread(connect, pool_name="llm", kubeconfig=kubeconfig, namespace="explicit")

    assert (source.namespace, source.config_text) == ("explicit", None)
    assert api.requests == []  # without a ConfigMap nothing is fetched before serving
