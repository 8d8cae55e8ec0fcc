"""The plugins a `RouterCore` keeps in service: KV events subscriptions across reloads, preparers closed."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import msgpack
import pytest
import zmq

from kvroute.router.config.builder import Registry
from kvroute.router.framework import ApiKind, Endpoint
from kvroute.router.plugins.scorers.precise_prefix_cache import PrecisePrefixCacheScorer
from kvroute.router.requestcontrol.handle import RequestHandle
from kvroute.router.runtime import RouterCore
from kvroute.router.runtime.core import CoreSettings
from tests.support import eventually, free_port, time_until

HOST = "127.0.12.251"
ENDPOINT = Endpoint.create("10.0.0.1", 8000)

CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - name: precise
    type: precise-prefix-cache-scorer
    parameters: {kvEvents: {bind: "tcp://%(host)s:%(port)d"}, blockSizeTokens: 4}
  - type: %(other)s
  - type: stub-preparer
schedulingProfiles:
  - name: default
    plugins: [{pluginRef: precise}, {pluginRef: %(other)s}]
"""


def config(port: int, other: str = "queue-scorer") -> str:
    return CONFIG % {"host": HOST, "port": port, "other": other}


class Engine:
    """A publisher connected to the router's address, storing one more sequence of one block per message."""

    def __init__(self, port: int) -> None:
        self.socket = zmq.Context.instance().socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(f"tcp://{HOST}:{port}")
        self.seq = 0

    def store(self) -> None:
        block = self.seq
        event = ["BlockStored", [block + 1], None, [block] * 4, 4]
        payload = msgpack.packb([0.0, [event], 0])
        self.socket.send_multipart([b"kv@10.0.0.1:8000@m", struct.pack(">Q", self.seq), payload])
        self.seq += 1

    async def until_indexed(self, entries: Callable[[], int]) -> None:
        """Publishes until the index grows (ZMQ drops what is sent before the subscription has reached it)."""
        start = entries()

        def indexed() -> bool:
            if entries() > start:
                return True
            self.store()
            return False

        await eventually(indexed, message="something indexed")

    def close(self) -> None:
        self.socket.close(linger=0)


async def test_a_reload_keeps_an_unchanged_consumer_and_its_subscription(registry: Registry) -> None:
    port = free_port(HOST)
    core = RouterCore([ENDPOINT], registry, config_text=config(port))
    await core.start()
    engine = Engine(port)
    try:
        precise = core.holder.current.plugins["precise"]
        assert isinstance(precise, PrecisePrefixCacheScorer)
        await engine.until_indexed(precise.kv_index_entries)
        (subscriber,) = core.kv_events.subscribers

        core.holder.reload_text(config(port, other="kv-cache-utilization-scorer"))
        await asyncio.sleep(0.1)  # the reload's subscription update runs in the background

        assert core.holder.current.plugins["precise"] is precise
        assert core.kv_events.subscribers == (subscriber,)
        await engine.until_indexed(precise.kv_index_entries)
    finally:
        engine.close()
        await core.stop()


async def test_a_changed_consumer_moves_to_its_new_subscription(registry: Registry) -> None:
    old_port, new_port = free_port(HOST), free_port(HOST)
    core = RouterCore([ENDPOINT], registry, config_text=config(old_port))
    await core.start()
    engine = Engine(new_port)
    try:
        core.holder.reload_text(config(new_port))
        new_address = f"tcp://{HOST}:{new_port}"
        await eventually(lambda: [s.subscription.bind for s in core.kv_events.subscribers] == [new_address])
        precise = core.holder.current.plugins["precise"]
        assert isinstance(precise, PrecisePrefixCacheScorer)
        await engine.until_indexed(precise.kv_index_entries)
    finally:
        engine.close()
        await core.stop()


async def test_preparers_are_closed_when_dropped_by_a_reload_or_at_stop(registry: Registry) -> None:
    port = free_port(HOST)
    core = RouterCore([ENDPOINT], registry, config_text=config(port))
    await core.start()
    first = core.holder.current.plugins["stub-preparer"]

    core.holder.reload_text(config(port).replace("- type: stub-preparer", "- type: stub-preparer\n    name: other"))
    await eventually(lambda: first.closed)  # type: ignore[attr-defined]
    second = core.holder.current.plugins["other"]
    assert not second.closed  # type: ignore[attr-defined]

    await core.stop()
    assert second.closed  # type: ignore[attr-defined]
    assert core.kv_events.subscribers == ()


async def test_an_address_that_cannot_be_bound_fails_start(registry: Registry) -> None:
    port = free_port(HOST)
    taken = zmq.Context.instance().socket(zmq.SUB)
    taken.bind(f"tcp://{HOST}:{port}")
    core = RouterCore([ENDPOINT], registry, config_text=config(port))
    try:
        with pytest.raises(zmq.ZMQError, match="Address already in use"):
            await core.start()
        assert core.kv_events.subscribers == ()
    finally:
        taken.close(linger=0)


SLOW_IDLE_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
saturationDetector:
  metricsStalenessThreshold: 1s
"""


@pytest.mark.integration
async def test_a_routed_request_is_followed_by_a_scrape_of_its_target_off_the_serving_loop(
    sim_fleet: Any, require_component: Callable[[str], ModuleType], registry: Registry
) -> None:
    require_component("kvroute.simulator.server.app")
    sims = [sim_fleet.start(), sim_fleet.start()]
    core = RouterCore(
        [Endpoint.create(sim.host, sim.port) for sim in sims],
        registry,
        CoreSettings(scrape_interval=0.05),
        config_text=SLOW_IDLE_CONFIG,
    )
    assert core.scraper.slowest == pytest.approx(0.4)  # idle endpoints: every 400 ms
    await core.start()
    try:
        scraper = core.scraper
        assert scraper.thread is not None and scraper.thread.ident != threading.get_ident()
        assert scraper.loop is not asyncio.get_running_loop()
        await eventually(lambda: not any(e.metrics.stale for e in core.pool.snapshot()), timeout=5.0)
        await asyncio.sleep(1.0)  # idle simulators: backed off to 400 ms
        # Just past the fast cadence (100 ms since the last scrape): the slow one would wait 300 ms more.
        await eventually(
            lambda: all(time.monotonic() - e.metrics.scraped_at > 0.1 for e in core.pool.snapshot()),
            interval=0.002,
        )
        routed_at = time.monotonic()
        body = json.dumps({"model": "m", "prompt": "hello"}).encode()
        started = core.director.start(ApiKind.COMPLETIONS, body, ())
        handle = started if isinstance(started, RequestHandle) else await started
        target = handle.endpoint
        assert target is not None

        took = await time_until(lambda: target.metrics.scraped_at > routed_at, timeout=1.0)
        handle.complete()
    finally:
        await core.stop()

    assert took < 0.15
    assert core.metrics.registry.get_sample_value("kvroute_endpoint_metrics_age_seconds_count") == 1
    assert core.metrics.registry.get_sample_value("kvroute_endpoint_metrics_age_seconds_bucket", {"le": "0.1"}) == 0
