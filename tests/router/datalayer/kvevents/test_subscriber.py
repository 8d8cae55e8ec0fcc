"""The KV events subscriber: message handling (hand-built frames) and both delivery modes over real ZMQ sockets."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import zmq

from kvroute.router.datalayer.kvevents import KVEventsSubscriber
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.framework import AllBlocksCleared, BlockRemoved, BlockStored, Endpoint, KVEventsSubscription
from kvroute.router.observability import RouterMetrics
from tests.support import eventually

A = Endpoint.create("10.0.0.1", 8000)
B = Endpoint.create("10.0.0.2", 8000)
TOPIC_A = "kv@10.0.0.1:8000@m"
STORED = ["BlockStored", [1, 2], None, list(range(8)), 4]
CENTRAL = KVEventsSubscription(bind="tcp://127.0.0.1:1")  # never bound in the handling tests


def sample(metrics: RouterMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def metrics() -> RouterMetrics:
    return RouterMetrics()


def subscriber(kit: Any, metrics: RouterMetrics, *consumers: Any) -> KVEventsSubscriber:
    return KVEventsSubscriber(CENTRAL, EndpointPool([A, B]), consumers, metrics)


def test_events_reach_every_consumer_in_order_and_are_counted(kit: Any, metrics: RouterMetrics) -> None:
    first, second = kit.consumer("first", CENTRAL), kit.consumer("second", CENTRAL)
    sub = subscriber(kit, metrics, first, second)

    sub.handle(kit.message(TOPIC_A, 0, [STORED, ["BlockRemoved", [2]]]))
    sub.handle(kit.message("kv@10.0.0.2:8000@other", 7, [["AllBlocksCleared"]]))

    expected = [
        (A.id, "m", (BlockStored((1, 2), None, tuple(range(8)), 4), BlockRemoved((2,)))),
        (B.id, "other", (AllBlocksCleared(),)),
    ]
    assert first.received == expected
    assert second.received == expected
    assert sample(metrics, "kvroute_kv_events_total", kind="block_stored") == 1
    assert sample(metrics, "kvroute_kv_events_total", kind="block_removed") == 1
    assert sample(metrics, "kvroute_kv_events_total", kind="all_blocks_cleared") == 1
    assert sample(metrics, "kvroute_kv_events_unindexed_blocks_total") == 6  # what the consumers returned
    assert sample(metrics, "kvroute_kv_index_entries", plugin_name="second") == 2


def test_malformed_and_unknown_endpoint_messages_are_counted_and_dropped(kit: Any, metrics: RouterMetrics) -> None:
    consumer = kit.consumer("c", CENTRAL)
    sub = subscriber(kit, metrics, consumer)

    sub.handle([b"kv@10.0.0.1:8000@m", b"\x00"])
    sub.handle(kit.message(TOPIC_A, 0, [["BlockStored", "not hashes", None, [], 4]]))
    sub.handle(kit.message("kv@10.9.9.9:8000@m", 0, [STORED]))

    assert consumer.received == []
    assert sample(metrics, "kvroute_kv_events_malformed_messages_total") == 2
    assert sample(metrics, "kvroute_kv_events_unknown_endpoint_messages_total") == 1


def test_a_gap_is_counted_and_warned_about_at_most_once_in_a_while(
    kit: Any, metrics: RouterMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = kit.consumer("c", CENTRAL)
    sub = subscriber(kit, metrics, consumer)

    with caplog.at_level(logging.WARNING, logger="kvroute.router.datalayer.kvevents.subscriber"):
        for seq in (10, 11, 14, 20, 21):
            sub.handle(kit.message(TOPIC_A, seq, [STORED]))

    assert len(consumer.received) == 5  # a gap loses nothing more
    assert sample(metrics, "kvroute_kv_events_sequence_gaps_total") == 2
    assert [r.getMessage() for r in caplog.records] == [f"KV events lost from {TOPIC_A}: sequence 14 after 11"]


def test_a_restarted_publisher_is_cleared_before_its_events(kit: Any, metrics: RouterMetrics) -> None:
    consumer = kit.consumer("c", CENTRAL)
    sub = subscriber(kit, metrics, consumer)

    sub.handle(kit.message(TOPIC_A, 500, [STORED]))
    sub.handle(kit.message(TOPIC_A, 0, [["BlockRemoved", [9]]]))
    sub.handle(kit.message(TOPIC_A, 1, []))

    assert [events for _, _, events in consumer.received] == [
        (BlockStored((1, 2), None, tuple(range(8)), 4),),
        (AllBlocksCleared(), BlockRemoved((9,))),
        (),
    ]
    assert sample(metrics, "kvroute_kv_events_publisher_restarts_total") == 1
    assert sample(metrics, "kvroute_kv_events_sequence_gaps_total") == 0


def test_a_failing_consumer_does_not_stop_the_others(kit: Any, metrics: RouterMetrics) -> None:
    failing, working = kit.consumer("failing", CENTRAL, fail=True), kit.consumer("working", CENTRAL)
    sub = subscriber(kit, metrics, failing, working)

    sub.handle(kit.message(TOPIC_A, 0, [STORED]))
    sub.handle(kit.message(TOPIC_A, 1, [STORED]))

    assert len(failing.received) == 2
    assert len(working.received) == 2


async def test_central_mode_binds_and_engines_connect(kit: Any, metrics: RouterMetrics, publishers: Any) -> None:
    host = next(kit.hosts)
    subscription = KVEventsSubscription(bind=f"tcp://{host}:{kit.free_port(host)}")
    consumer = kit.consumer("c", subscription)
    sub = KVEventsSubscriber(subscription, EndpointPool([A, B]), [consumer], metrics)
    await sub.start()
    try:
        assert sub.address == subscription.bind
        engine_a = publishers(TOPIC_A, connect=subscription.bind)
        engine_b = publishers("kv@10.0.0.2:8000@m", connect=subscription.bind)
        other = publishers("other@10.0.0.1:8000@m", connect=subscription.bind)  # filtered out by topic
        await engine_a.until_heard(lambda: any(r[0] == A.id for r in consumer.received))
        await engine_b.until_heard(lambda: any(r[0] == B.id for r in consumer.received))
        consumer.received.clear()

        other.send([STORED])
        for _ in range(3):
            engine_a.send([STORED])
        engine_b.send([["AllBlocksCleared"]])
        await eventually(lambda: len(consumer.received) == 4, timeout=10.0)

        assert [endpoint for endpoint, _, _ in consumer.received].count(A.id) == 3
        assert sample(metrics, "kvroute_kv_events_sequence_gaps_total") == 0
    finally:
        await sub.stop()
    again = KVEventsSubscriber(subscription, EndpointPool(), [], metrics)
    await again.start(retry_for=10.0)  # the address is released (ZMQ does it in the background)
    await again.stop()


async def test_per_endpoint_mode_follows_the_pool(kit: Any, metrics: RouterMetrics, publishers: Any) -> None:
    port = kit.free_port("127.0.12.250")
    hosts = [next(kit.hosts) for _ in range(2)]
    first, second = (Endpoint.create(host, 8000) for host in hosts)
    engines = [publishers(f"kv@{host}:8000@m", bind=f"tcp://{host}:{port}") for host in hosts]
    pool = EndpointPool([first])
    subscription = KVEventsSubscription(endpoint_port=port)
    consumer = kit.consumer("c", subscription)
    sub = KVEventsSubscriber(subscription, pool, [consumer], metrics)
    await sub.start()
    try:
        await engines[0].until_heard(lambda: bool(consumer.received))

        pool.set_endpoints([first, second])
        await engines[1].until_heard(lambda: any(r[0] == second.id for r in consumer.received))

        pool.set_endpoints([second])
        consumer.received.clear()
        for _ in range(5):
            engines[0].send([STORED])
        await engines[1].until_heard(lambda: len(consumer.received) >= 3)

        assert {endpoint for endpoint, _, _ in consumer.received} == {second.id}
        # Disconnected: the removed engine's messages never arrive, not even as unknown-endpoint ones.
        assert sample(metrics, "kvroute_kv_events_unknown_endpoint_messages_total") == 0
    finally:
        await sub.stop()


async def test_an_address_in_use_fails_start(kit: Any, metrics: RouterMetrics) -> None:
    host = next(kit.hosts)
    subscription = KVEventsSubscription(bind=f"tcp://{host}:{kit.free_port(host)}")
    holder = KVEventsSubscriber(subscription, EndpointPool(), [], metrics)
    await holder.start()
    try:
        with pytest.raises(zmq.ZMQError, match="Address already in use"):
            await KVEventsSubscriber(subscription, EndpointPool(), [], metrics).start(retry_for=0.2)
    finally:
        await holder.stop()
