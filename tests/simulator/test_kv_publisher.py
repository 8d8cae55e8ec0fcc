from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import zmq

from kvroute.simulator.engine.block_manager import chain_hashes, root_hash
from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVCacheGroup, KVEvent
from kvroute.simulator.engine.profiles import PROFILES
from kvroute.simulator.engine.request import EngineRequest
from kvroute.simulator.kv_publisher import KVEventPublisher, offset_endpoint
from tests.support import eventually_sync, free_port

TOPIC = "kv@127.0.0.1:8000@tiny-model"
BLOCK = 16
# The wire order of each event's fields after its tag, as vLLM's array-like encoding lays them out.
ARRAY_FIELDS: dict[str, tuple[str, ...]] = {
    "BlockStored": (
        "block_hashes",
        "parent_block_hash",
        "token_ids",
        "block_size",
        "lora_id",
        "medium",
        "lora_name",
    ),
    "BlockRemoved": ("block_hashes", "medium"),
    "AllBlocksCleared": (),
}


@dataclass
class Message:
    topic: bytes
    seq: int
    timestamp: float
    events: list[Any]


@pytest.fixture
def sub() -> Iterator[zmq.Socket[bytes]]:
    socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, b"kv@")
    yield socket
    socket.close()


def receive(sub: zmq.Socket[bytes], timeout_s: float = 5.0) -> Message:
    assert sub.poll(int(timeout_s * 1000)), "no KV event message arrived"
    frames = sub.recv_multipart()
    assert len(frames) == 3
    topic, seq, payload = frames
    assert len(seq) == 8
    batch = msgpack.unpackb(payload)
    assert isinstance(batch, list) and len(batch) == 3
    timestamp, events, dp_rank = batch
    assert isinstance(timestamp, float) and isinstance(events, list) and events
    assert dp_rank == 0
    return Message(topic, struct.unpack(">Q", seq)[0], timestamp, events)


def join(pub: KVEventPublisher, sub: zmq.Socket[bytes]) -> int:
    """Publish probes until the subscriber receives one (PUB/SUB slow joiner); returns the next seq."""
    probes = 0

    def heard() -> bool:
        nonlocal probes
        # The probe's timestamp is its index among all messages sent, so its seq must equal it.
        pub.publish([AllBlocksCleared()], float(probes))
        probes += 1
        return bool(sub.poll(20))

    eventually_sync(heard, timeout=5.0, interval=0, message="the subscriber to join")
    message = receive(sub)
    assert message.seq == int(message.timestamp)
    while message.seq < pub.next_seq - 1:
        following = receive(sub)
        assert following.seq == message.seq + 1
        message = following
    return pub.next_seq


def fields(event: Any, map_format: bool) -> tuple[str, dict[str, Any]]:
    """An event's tag and named fields, checking it has exactly the fields its form requires."""
    if map_format:
        assert isinstance(event, dict)
        named = dict(event)
        tag = named.pop("type")
        assert set(named) == set(ARRAY_FIELDS[tag])
        return tag, named
    assert isinstance(event, list)
    tag, *values = event
    assert len(values) == len(ARRAY_FIELDS[tag])
    return tag, dict(zip(ARRAY_FIELDS[tag], values, strict=True))


def stored(
    hashes: list[int], parent: int | None, tokens: list[int], lora: tuple[int, str] | None = None
) -> tuple[str, dict[str, Any]]:
    return "BlockStored", {
        "block_hashes": hashes,
        "parent_block_hash": parent,
        "token_ids": tokens,
        "block_size": BLOCK,
        "lora_id": lora[0] if lora else None,
        "medium": "GPU",
        "lora_name": lora[1] if lora else None,
    }


def removed(hashes: list[int]) -> tuple[str, dict[str, Any]]:
    return "BlockRemoved", {"block_hashes": hashes, "medium": "GPU"}


def run(engine: Engine, pub: KVEventPublisher, now: float, sent_at: list[float]) -> float:
    """Step the engine until idle, publishing each step's events; records when a message went out."""
    for _ in range(1000):
        if not engine.has_work():
            return now
        now += engine.step(now).duration
        events = engine.drain_kv_events()
        pub.publish(events, now)
        if events:
            sent_at.append(now)
    raise AssertionError("the engine did not go idle")


@pytest.mark.parametrize("map_format", [False, True], ids=["array", "map"])
@pytest.mark.parametrize("bind", [True, False], ids=["publisher-binds", "publisher-connects"])
def test_engine_kv_events_reach_a_subscriber(sub: zmq.Socket[bytes], bind: bool, map_format: bool) -> None:
    if bind:
        pub = KVEventPublisher("tcp://127.0.0.1:*", TOPIC, map_format=map_format)
        sub.connect(pub.endpoint)
    else:
        port = sub.bind_to_random_port("tcp://127.0.0.1")
        pub = KVEventPublisher(f"tcp://127.0.0.1:{port}", TOPIC, bind=False, map_format=map_format)
    with pub:
        first_seq = join(pub, sub)
        # 8 blocks and 64-token chunks: a 100-token prompt is stored in two messages (4 + 2 full blocks, the
        # 4-token tail never is), and the next prompt must evict the first one's blocks.
        engine = Engine(
            PROFILES["tiny"].with_overrides(num_gpu_blocks=8, max_num_batched_tokens=64),
            record_kv_events=True,
        )
        prompt_a = list(range(1000, 1100))
        prompt_b = list(range(2000, 2100))
        hashes_a = chain_hashes(prompt_a, BLOCK, root_hash(0, None))
        hashes_b = chain_hashes(prompt_b, BLOCK, root_hash(0, "sql-adapter"))
        sent_at: list[float] = []
        engine.add_request(EngineRequest("a", prompt_a, max_tokens=3))
        now = run(engine, pub, 0.0, sent_at)
        engine.add_request(EngineRequest("b", prompt_b, max_tokens=3, lora_name="sql-adapter"))
        now = run(engine, pub, now, sent_at)
        engine.blocks.clear_cache()
        pub.publish(engine.drain_kv_events(), now + 1.0)
        sent_at.append(now + 1.0)

        messages = [receive(sub) for _ in sent_at]

    assert [m.seq for m in messages] == list(range(first_seq, first_seq + len(sent_at)))
    assert [m.topic for m in messages] == [TOPIC.encode()] * len(sent_at)
    assert [m.timestamp for m in messages] == sent_at
    sql = (1, "sql-adapter")  # the first adapter seen gets id 1
    assert [[fields(e, map_format) for e in m.events] for m in messages] == [
        [stored(hashes_a[:4], None, prompt_a[:64])],
        [stored(hashes_a[4:6], hashes_a[3], prompt_a[64:96])],
        # The least recently freed blocks are A's tail, reused first.
        [removed(hashes_a[5:3:-1]), stored(hashes_b[:4], None, prompt_b[:64], sql)],
        [removed(hashes_a[3:0:-1]), stored(hashes_b[4:6], hashes_b[3], prompt_b[64:96], sql)],
        [("AllBlocksCleared", {})],
    ]
    raw_first, raw_last = messages[0].events[0], messages[-1].events[0]
    if map_format:
        assert raw_first["type"] == "BlockStored" and raw_first["parent_block_hash"] is None
        assert raw_last == {"type": "AllBlocksCleared"}
    else:
        assert raw_first[:3] == ["BlockStored", hashes_a[:4], None]
        assert raw_last == ["AllBlocksCleared"]


def test_lora_ids_follow_the_given_table_then_count_on(sub: zmq.Socket[bytes]) -> None:
    with KVEventPublisher("tcp://127.0.0.1:*", TOPIC, lora_ids={"sql": 7}) as pub:
        sub.connect(pub.endpoint)
        join(pub, sub)
        pub.publish(
            [
                BlockStored((1,), None, tuple(range(BLOCK)), BLOCK, "sql"),
                BlockStored((2,), None, tuple(range(BLOCK)), BLOCK, "chat"),
                BlockStored((3,), None, tuple(range(BLOCK)), BLOCK, None),
            ],
            1.0,
        )
        message = receive(sub)
    assert [(e[5], e[7]) for e in message.events] == [(7, "sql"), (8, "chat"), (None, None)]


def test_full_width_hashes_survive_the_wire(sub: zmq.Socket[bytes]) -> None:
    top = 2**64 - 1
    with KVEventPublisher("tcp://127.0.0.1:*", TOPIC) as pub:
        sub.connect(pub.endpoint)
        join(pub, sub)
        pub.publish([BlockStored((top, 2**63), top - 1, tuple(range(2 * BLOCK)), BLOCK, None)], 2.0)
        message = receive(sub)
    assert message.events[0][1:3] == [[top, 2**63], top - 1]


def test_messages_a_slow_subscriber_cannot_take_are_dropped_counted_and_skipped(
    sub: zmq.Socket[bytes],
) -> None:
    sub.setsockopt(zmq.RCVHWM, 1)
    big: list[KVEvent] = [BlockStored(tuple(range(256)), None, tuple(range(256 * BLOCK)), BLOCK, None)]
    with KVEventPublisher("tcp://127.0.0.1:*", TOPIC, send_hwm=8) as pub:
        sub.connect(pub.endpoint)
        first_seq = join(pub, sub)
        while pub.dropped == 0 and pub.next_seq < first_seq + 20_000:
            pub.publish(big, 3.0)  # the subscriber reads nothing meanwhile
        seqs: list[int] = []
        while sub.poll(200):
            seqs.append(receive(sub).seq)
        pub.publish([AllBlocksCleared()], 4.0)
        after = receive(sub)
    assert pub.dropped > 0
    assert len(seqs) + pub.dropped == pub.next_seq - 1 - first_seq
    assert seqs == sorted(set(seqs))
    # The loop ended on a dropped message, so the subscriber sees a gap before the next one.
    assert after.seq == pub.next_seq - 1 and after.seq - 1 not in seqs


def test_empty_batches_send_nothing_and_a_closed_publisher_refuses() -> None:
    pub = KVEventPublisher("tcp://127.0.0.1:*", TOPIC)
    with pub:
        pub.publish([], 1.0)
        assert pub.next_seq == 0
    with pytest.raises(RuntimeError, match="closed"):
        pub.publish([AllBlocksCleared()], 2.0)


def test_rank_endpoints_are_offset_as_vllm_offsets_them() -> None:
    assert offset_endpoint("tcp://*:5557", 0) == "tcp://*:5557"
    assert offset_endpoint("tcp://*:5557", 1) == "tcp://*:5558"
    assert offset_endpoint("tcp://10.0.0.1:5557", 3) == "tcp://10.0.0.1:5560"
    assert offset_endpoint("tcp://*:0", 2) == "tcp://*:0"
    assert offset_endpoint("ipc:///tmp/kv", 1) == "ipc:///tmp/kv_dp1"


def test_a_data_parallel_rank_publishes_on_its_port_with_its_rank(sub: zmq.Socket[bytes]) -> None:
    port = free_port()
    with KVEventPublisher(f"tcp://127.0.0.1:{port}", TOPIC, data_parallel_rank=1) as pub:
        assert pub.endpoint == f"tcp://127.0.0.1:{port + 1}"
        sub.connect(pub.endpoint)
        eventually_sync(lambda: _probe(pub, sub), timeout=5.0, interval=0, message="the subscriber to join")
        _, seq, payload = sub.recv_multipart()
    timestamp, _, rank = msgpack.unpackb(payload)
    # Each rank numbers its own messages from 0: a probe's timestamp is the count this rank sent before it.
    assert struct.unpack(">Q", seq)[0] == int(timestamp)
    assert rank == 1


def _probe(pub: KVEventPublisher, sub: zmq.Socket[bytes]) -> bool:
    """One more probe until the subscriber hears one (PUB/SUB drops what is sent before it joins)."""
    pub.publish([AllBlocksCleared()], float(pub.next_seq))
    return bool(sub.poll(20))


def test_hybrid_groups_publish_each_store_per_group_and_the_window_frees_old_blocks(
    sub: zmq.Socket[bytes],
) -> None:
    groups = (KVCacheGroup("full_attention"), KVCacheGroup("sliding_window", 2 * BLOCK))
    with KVEventPublisher("tcp://127.0.0.1:*", TOPIC, groups=groups) as pub:
        sub.connect(pub.endpoint)
        join(pub, sub)
        pub.publish([BlockStored((1, 2, 3, 4), None, tuple(range(4 * BLOCK)), BLOCK, None)], 1.0)
        stored = receive(sub)
        pub.publish([BlockRemoved((1, 2, 3, 4))], 2.0)
        removed = receive(sub)

    full, sliding, freed = stored.events
    assert full[0] == sliding[0] == "BlockStored" and full[1] == sliding[1] == [1, 2, 3, 4]
    assert full[8:] == [None, 0, "full_attention", None]
    assert sliding[8:] == [None, 1, "sliding_window", 2 * BLOCK]
    assert freed == ["BlockRemoved", [1, 2], "GPU", 1]  # outside the 32-token window of the run's end
    assert removed.events == [["BlockRemoved", [1, 2, 3, 4], "GPU", 0], ["BlockRemoved", [3, 4], "GPU", 1]]


def test_group_zero_must_be_full_attention() -> None:
    with pytest.raises(ValueError, match="group 0"):
        KVEventPublisher("tcp://127.0.0.1:*", TOPIC, groups=(KVCacheGroup("sliding_window", 64),))
    with pytest.raises(ValueError, match="positive window"):
        KVCacheGroup.parse("sliding_window")
