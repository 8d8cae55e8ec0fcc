"""The subscriptions of the configuration in force: shared, kept across reloads, closed when no longer wanted."""

from __future__ import annotations

from typing import Any

from kvroute.router.datalayer.kvevents import KVEventsService
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.framework import Endpoint, KVEventsSubscription
from kvroute.router.observability import RouterMetrics

A = Endpoint.create("10.0.0.1", 8000)


def address(kit: Any) -> str:
    host = next(kit.hosts)
    return f"tcp://{host}:{kit.free_port(host)}"


async def test_equal_subscriptions_share_one_subscriber_and_a_kept_one_keeps_its_socket(
    kit: Any, publishers: Any
) -> None:
    central = KVEventsSubscription(bind=address(kit))
    first, second = kit.consumer("first", central), kit.consumer("second", central)
    service = KVEventsService(EndpointPool([A]))
    try:
        await service.apply([first, second])
        (subscriber,) = service.subscribers
        assert subscriber.consumers == (first, second)
        engine = publishers("kv@10.0.0.1:8000@m", connect=central.bind)
        await engine.until_heard(lambda: bool(second.received))

        await service.apply([second])  # a reload that dropped "first" and carried "second" over
        first_heard = len(first.received)

        assert service.subscribers == (subscriber,)
        assert subscriber.consumers == (second,)
        heard = len(second.received)
        engine.send([["AllBlocksCleared"]])
        await engine.until_heard(lambda: len(second.received) > heard + 1)
        assert len(first.received) == first_heard
    finally:
        await service.stop()
    assert service.subscribers == ()


async def test_a_subscription_no_longer_wanted_is_closed_and_its_address_can_be_taken_again(kit: Any) -> None:
    metrics = RouterMetrics()
    bind = address(kit)
    old = kit.consumer("old", KVEventsSubscription(bind=bind))
    new = kit.consumer("new", KVEventsSubscription(bind=bind, topic_filter="kv@10."))
    other = kit.consumer("other", KVEventsSubscription(endpoint_port=kit.free_port("127.0.12.250")))
    service = KVEventsService(EndpointPool([A]), metrics)
    try:
        await service.apply([old, other])
        assert len(service.subscribers) == 2
        metrics.set_kv_index_entries("old", 5)

        await service.apply([new, other])  # the same address under another topic filter: closed, then bound anew

        assert [s.subscription for s in service.subscribers] == [other.subscription, new.subscription]
        assert metrics.registry.get_sample_value("kvroute_kv_index_entries", {"plugin_name": "old"}) is None
    finally:
        await service.stop()
