from __future__ import annotations

import asyncio
import logging
import textwrap
import threading
from pathlib import Path

import pytest

from kvroute.router.config import ConfigError
from kvroute.router.config import reload as reload_module
from kvroute.router.config.builder import LoadedConfig
from kvroute.router.config.reload import ConfigHolder, ConfigTooLarge, read_config_file
from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest, Plugin
from kvroute.router.observability import RouterMetrics
from tests.support import eventually

Registry = dict[str, type[Plugin]]


TEMPLATE = textwrap.dedent("""\
    apiVersion: kvroute.io/v1alpha1
    kind: EndpointPickerConfig
    plugins:
      - type: threshold-filter
        parameters:
          threshold: {threshold}
      - type: queue-scorer
      - type: prefix-cache-scorer{prefix_params}
    schedulingProfiles:
      - name: default
        plugins:
          - pluginRef: threshold-filter
          - pluginRef: queue-scorer
            weight: {queue_weight}
          - pluginRef: prefix-cache-scorer
            weight: 3
    """)


def document(*, threshold: float = 0.5, queue_weight: int = 2, prefix_params: str = "") -> str:
    return TEMPLATE.format(threshold=threshold, queue_weight=queue_weight, prefix_params=prefix_params)


def reloads(metrics: RouterMetrics, result: str) -> float:
    return metrics.registry.get_sample_value("kvroute_config_reloads_total", {"result": result}) or 0.0


def serve_one(config: LoadedConfig, prompt: str) -> Endpoint:
    """Schedules one request and runs its pre-request hooks, as the Director would."""
    request = LLMRequest("r", "m", ApiKind.COMPLETIONS, prompt, {}, {})
    state = CycleState()
    endpoints = [Endpoint.create("10.0.0.1", 8000), Endpoint.create("10.0.0.2", 8000)]
    result = config.scheduler.schedule(request, endpoints, state)
    for hook in config.pre_request:
        hook.pre_request(state, request, result)
    return result.endpoints[0]


def test_unchanged_plugins_keep_their_instance_and_state(registry: Registry) -> None:
    holder = ConfigHolder.load(registry, document())
    old = holder.current
    served = serve_one(old, "hello")

    new = holder.reload_text(document(threshold=0.7, queue_weight=5, prefix_params="\n    parameters: {}"))

    assert holder.current is new
    assert new.plugins["prefix-cache-scorer"] is old.plugins["prefix-cache-scorer"]
    assert new.plugins["prefix-cache-scorer"].index == {"hello": served.id}
    assert new.plugins["queue-scorer"] is old.plugins["queue-scorer"]
    assert new.plugins["max-score-picker"] is old.plugins["max-score-picker"]
    assert new.plugins["threshold-filter"] is not old.plugins["threshold-filter"]
    assert new.plugins["threshold-filter"].params.threshold == 0.7
    assert [w for _, w in new.profiles["default"].scorers] == [5.0, 3.0]
    # The old configuration is untouched, for the requests still running on it.
    assert old.profiles["default"].filters[0].params.threshold == 0.5
    assert [w for _, w in old.profiles["default"].scorers] == [2.0, 3.0]


def test_equal_parameters_written_differently_count_as_unchanged(registry: Registry) -> None:
    holder = ConfigHolder.load(registry, document())
    old = holder.current

    new = holder.reload_text(document(prefix_params="\n    parameters:\n      blockSizeTokens: 16"))
    changed = holder.reload_text(document(prefix_params="\n    parameters:\n      blockSizeTokens: 32"))

    assert new.plugins["prefix-cache-scorer"] is old.plugins["prefix-cache-scorer"]
    assert changed.plugins["prefix-cache-scorer"] is not old.plugins["prefix-cache-scorer"]
    assert changed.plugins["prefix-cache-scorer"].index == {}


def test_a_new_type_under_the_same_name_is_a_new_instance(registry: Registry) -> None:
    holder = ConfigHolder.load(registry, document())
    old = holder.current

    new = holder.reload_text(
        document().replace("- type: queue-scorer", "- name: queue-scorer\n    type: constant-scorer")
    )

    assert new.plugins["queue-scorer"].type_name == "constant-scorer"
    assert new.plugins["queue-scorer"] is not old.plugins["queue-scorer"]


def test_rejected_reload_keeps_the_old_configuration_serving(registry: Registry) -> None:
    metrics = RouterMetrics()
    holder = ConfigHolder.load(registry, document(), metrics=metrics)
    old = holder.current

    with pytest.raises(ConfigError, match=r"plugins\[0\]\.parameters\.threshold: Input should be less than"):
        holder.reload_text(document(threshold=2))
    with pytest.raises(ConfigError, match="invalid YAML"):
        holder.reload_text("plugins: [")

    assert holder.current is old
    assert reloads(metrics, "failure") == 2
    assert reloads(metrics, "success") == 0
    holder.reload_text(document(threshold=0.6))
    assert reloads(metrics, "success") == 1


def test_listeners_hear_of_successful_reloads_only(registry: Registry) -> None:
    holder = ConfigHolder.load(registry, document())
    heard: list[LoadedConfig] = []

    def failing(config: LoadedConfig) -> None:
        raise RuntimeError("listener bug")

    holder.subscribe(failing)
    holder.subscribe(heard.append)
    with pytest.raises(ConfigError):
        holder.reload_text(document(threshold=-1))
    new = holder.reload_text(document(threshold=0.9))

    assert heard == [new]
    assert holder.current is new


def test_scheduler_metrics_follow_the_reloaded_configuration(registry: Registry) -> None:
    metrics = RouterMetrics()
    holder = ConfigHolder.load(registry, document(), metrics=metrics)
    holder.reload_text(document(threshold=0.9))

    serve_one(holder.current, "hi")

    assert metrics.registry.get_sample_value("kvroute_scheduler_duration_seconds_count") == 1
    labels = {"extension_point": "Filter.filter", "plugin_type": "threshold-filter", "plugin_name": "threshold-filter"}
    assert metrics.registry.get_sample_value("kvroute_scheduler_plugin_duration_seconds_count", labels) == 1


async def test_watch_file_reloads_changes_and_survives_bad_ones(
    tmp_path: Path, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"

    def write(text: str) -> None:  # atomically, as a mounted ConfigMap changes: a poll never sees half a file
        staged = tmp_path / "staged.yaml"
        staged.write_text(text)
        staged.replace(path)

    write(document())
    metrics = RouterMetrics()
    holder = ConfigHolder.load(registry, path.read_text(), metrics=metrics)
    first = holder.current
    watcher = asyncio.create_task(holder.watch_file(path, interval=0.01))
    try:
        await asyncio.sleep(0.05)
        assert holder.current is first  # the content it was loaded from is not reloaded

        write(document(threshold=0.8))
        await eventually(lambda: holder.current is not first)
        second = holder.current
        assert second.plugins["threshold-filter"].params.threshold == 0.8

        with caplog.at_level(logging.ERROR):
            write(document(threshold=3))
            await eventually(lambda: reloads(metrics, "failure") == 1)
        assert holder.current is second
        assert "rejected, keeping the current configuration" in caplog.text
        assert "plugins[0].parameters.threshold" in caplog.text

        path.unlink()
        await asyncio.sleep(0.05)
        write(document(threshold=0.3))
        await eventually(lambda: holder.current is not second)
        assert holder.current.plugins["threshold-filter"].params.threshold == 0.3
        assert reloads(metrics, "success") == 2
        assert reloads(metrics, "failure") == 1
        assert not watcher.done()
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_reload_parses_in_a_worker_thread_and_rejects_deep_nesting_cleanly(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = RouterMetrics()
    holder = ConfigHolder.load(registry, document(), metrics=metrics)
    first = holder.current
    parsed_on: list[str] = []
    parse = reload_module.parse_config

    def recording_parse(text: str) -> object:
        parsed_on.append(threading.current_thread().name)
        return parse(text)

    monkeypatch.setattr(reload_module, "parse_config", recording_parse)

    reloaded = await holder.reload(document(threshold=0.9))
    with pytest.raises(ConfigError, match="the document is nested too deeply"):
        await holder.reload("a: " + "[" * 10_000 + "]" * 10_000)

    assert reloaded is holder.current is not first
    assert reloaded.plugins["threshold-filter"].params.threshold == 0.9
    assert parsed_on and threading.main_thread().name not in parsed_on
    assert (reloads(metrics, "success"), reloads(metrics, "failure")) == (1, 1)


async def test_the_watch_skips_a_file_over_the_size_limit(
    tmp_path: Path, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(document())
    holder = ConfigHolder.load(registry, path.read_text())
    first = holder.current
    limit = len(document()) + 100
    with caplog.at_level(logging.WARNING):
        watcher = asyncio.create_task(holder.watch_file(path, interval=0.01, max_bytes=limit))
        try:
            path.write_text(document(threshold=0.8) + "#" * 200 + "\n")
            await eventually(lambda: "larger than the" in caplog.text)
            assert holder.current is first
            path.write_text(document(threshold=0.8))
            await eventually(lambda: holder.current is not first)
        finally:
            watcher.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watcher

    assert read_config_file(path, limit) == document(threshold=0.8)
    with pytest.raises(ConfigTooLarge, match=f"larger than the {limit - 200}-byte limit"):
        read_config_file(path, limit - 200)
