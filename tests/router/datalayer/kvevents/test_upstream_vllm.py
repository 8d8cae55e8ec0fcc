"""Messages recorded from vLLM's own publisher (tests/fixtures/upstream, scripts/golden/record_upstream.py): the
decoder reads them, and the precise index applies them as vLLM means them (ranks, groups, partial blocks)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from kvroute.router.datalayer.kvevents import KVEventsSubscriber, decode_message
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.framework import AllBlocksCleared, BlockRemoved, BlockStored, Endpoint, KVEventsSubscription
from kvroute.router.plugins.prefix.precise_index import PreciseIndex
from kvroute.router.plugins.prefix.request_keys import chain_keys, root_key

VLLM = Path(__file__).parents[3] / "fixtures" / "upstream" / "vllm-0.34.0" / "kv_events"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ENDPOINT = "127.0.0.1:8000"


def recorded(scenario: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((VLLM / f"{scenario}.json").read_text())
    return document


def frames(message: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(frame) for frame in message["frames"]]


def keys(tokens: range, block_size: int) -> list[int]:
    return chain_keys(list(tokens), block_size, root_key(MODEL), 256)


def replay(scenario: str) -> PreciseIndex:
    index = PreciseIndex()
    for message in recorded(scenario)["messages"]:
        decoded = decode_message(frames(message))
        index.apply(decoded.endpoint_id, decoded.model, decoded.events, 0.0, decoded.rank)
    return index


def test_integer_hashes_in_vllms_map_form() -> None:
    messages = [decode_message(frames(m)) for m in recorded("int_hashes")["messages"]]

    assert [(m.topic, m.endpoint_id, m.model, m.seq, m.data_parallel_rank) for m in messages] == [
        (f"kv@{ENDPOINT}@{MODEL}", ENDPOINT, MODEL, seq, 0) for seq in range(3)
    ]
    assert messages[0].events == (
        BlockStored((101, 102, (1 << 64) - 5), None, tuple(range(1, 13)), 4, None, "GPU", None, 0, "full_attention"),
    )
    assert messages[1].events == (BlockRemoved(((1 << 64) - 5,), "GPU", 0),)
    assert messages[2].events == (AllBlocksCleared(),)


def test_bytes_hashes_are_read_as_their_last_eight_bytes() -> None:
    stored, removed = (decode_message(frames(m)).events for m in recorded("bytes_hashes")["messages"])

    h1, h2, h3 = (int.from_bytes(bytes([n]) * 8, "big") for n in (1, 2, 3))
    assert [(e.block_hashes, e.parent_block_hash) for e in stored if isinstance(e, BlockStored)] == [
        ((h1, h2), None),
        ((h3,), h2),
    ]
    assert removed == (BlockRemoved((h3,), "GPU", 0),)
    index = replay("bytes_hashes")
    assert index.match(keys(range(1, 13), 4), [ENDPOINT], 0.0) == {ENDPOINT: 2}


def test_adapter_blocks_are_keyed_from_the_adapters_name() -> None:
    (message,) = (decode_message(frames(m)) for m in recorded("lora")["messages"])

    (event,) = message.events
    assert isinstance(event, BlockStored)
    assert (event.lora_id, event.lora_name) == (1, "sql-lora")
    lora_keys = chain_keys(list(range(1, 9)), 4, root_key("sql-lora"), 256)
    assert replay("lora").match(lora_keys, [ENDPOINT], 0.0) == {ENDPOINT: 2}


def test_data_parallel_ranks_publish_on_offset_ports_with_their_own_sequences() -> None:
    document = recorded("dp_ranks")
    messages = document["messages"]

    # vLLM moves rank 1 to the configured port + 1, binding or connecting alike.
    assert document["endpoints"]["rank 1"] == {
        "configured bind tcp://*:5557": "tcp://*:5558",
        "configured connect tcp://router:5557": "tcp://router:5558",
    }
    assert [(m["data_parallel_rank"], m["port_offset"]) for m in messages] == [(0, 0), (1, 1), (1, 1), (1, 1)]
    decoded = [decode_message(frames(m)) for m in messages]
    assert [(d.rank, d.seq) for d in decoded] == [(0, 0), (1, 0), (1, 1), (1, 2)]


def test_a_rank_evicting_its_copy_leaves_the_other_ranks() -> None:
    index = replay("dp_ranks")

    assert index.match(keys(range(1, 13), 4), [ENDPOINT], 0.0) == {ENDPOINT: 3}  # rank 0 still holds it
    assert index.match(keys(range(50, 54), 4), [ENDPOINT], 0.0) == {ENDPOINT: 1}  # rank 1's own
    assert index.blocks_of(ENDPOINT) == 4


def test_the_subscriber_keeps_each_ranks_sequence_apart(kit: Any) -> None:
    pool = EndpointPool([Endpoint.create("127.0.0.1", 8000)])
    consumer = kit.consumer("recorder", KVEventsSubscription(bind="tcp://127.0.0.1:1"))  # never bound here
    subscriber = KVEventsSubscriber(consumer.subscription, pool, [consumer])

    for message in recorded("dp_ranks")["messages"]:
        subscriber.handle(frames(message))

    # Rank 1's sequence 0 after rank 0's is another publisher, not a restart: nothing is cleared.
    assert consumer.ranks == [0, 1, 1, 1]
    assert not any(isinstance(e, AllBlocksCleared) for _, _, events in consumer.received for e in events)


def test_a_sliding_window_groups_removal_keeps_the_full_attention_match() -> None:
    index = replay("hybrid_groups")

    assert index.match(keys(range(1, 13), 4), [ENDPOINT], 0.0) == {ENDPOINT: 3}
    assert index.blocks_of(ENDPOINT) == 3  # only the full-attention group is indexed


def test_the_block_size_is_the_full_attention_groups_whatever_comes_last() -> None:
    index = replay("hybrid_block_sizes")

    assert index.block_size_of(ENDPOINT) == 4
    assert index.match(keys(range(1, 13), 4), [ENDPOINT], 0.0) == {ENDPOINT: 3}


def test_partial_blocks_are_ignored_for_matching() -> None:
    index = replay("partial_block")

    assert index.block_size_of(ENDPOINT) == 8
    assert index.blocks_of(ENDPOINT) == 1
    assert index.match(keys(range(1, 13), 8), [ENDPOINT], 0.0) == {ENDPOINT: 1}


@pytest.mark.parametrize("path", sorted(VLLM.glob("*.json")), ids=lambda p: p.stem)
def test_every_recorded_message_decodes_to_the_upstream_events(path: Path) -> None:
    for message in json.loads(path.read_text())["messages"]:
        decoded = decode_message(frames(message))
        upstream = message["upstream"]
        assert decoded.timestamp == upstream[0]
        assert decoded.data_parallel_rank == upstream[2]
        assert [type(e).__name__ for e in decoded.events] == [e["type"] for e in upstream[1]]
        for event, raw in zip(decoded.events, upstream[1], strict=True):
            if not isinstance(event, AllBlocksCleared):
                assert event.group_idx == raw.get("group_idx")
                assert event.medium == raw.get("medium")
