"""vLLM's KV-event wire format, from hand-built msgpack messages."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest

from kvroute.router.datalayer.kvevents.decode import MalformedMessage, block_hash, decode_message, parse_topic
from kvroute.router.framework import AllBlocksCleared, BlockRemoved, BlockStored

TOPIC = b"kv@10.0.0.7:8000@meta-llama/Llama-3.1-8B-Instruct"


def frames(events: list[Any], seq: int = 0, *, topic: bytes = TOPIC, payload: list[Any] | None = None) -> list[bytes]:
    body = payload if payload is not None else [1700000000.5, events, 0]
    return [topic, struct.pack(">Q", seq), msgpack.packb(body)]


def test_array_form_of_the_three_events() -> None:
    message = decode_message(
        frames(
            [
                ["BlockStored", [11, 12], None, list(range(32)), 16, None, "GPU", None],
                ["BlockRemoved", [11], "GPU"],
                ["AllBlocksCleared"],
            ],
            seq=41,
        )
    )

    assert message.endpoint_id == "10.0.0.7:8000"
    assert message.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert message.seq == 41
    assert message.timestamp == 1700000000.5
    assert message.data_parallel_rank == 0
    assert message.events == (
        BlockStored((11, 12), None, tuple(range(32)), 16, None, "GPU", None),
        BlockRemoved((11,), "GPU"),
        AllBlocksCleared(),
    )


def test_map_form_gives_the_same_events() -> None:
    message = decode_message(
        frames(
            [
                {
                    "type": "BlockStored",
                    "block_hashes": [21],
                    "parent_block_hash": 20,
                    "token_ids": list(range(16)),
                    "block_size": 16,
                    "lora_id": 3,
                    "medium": "GPU",
                    "lora_name": "sql-adapter",
                },
                {"type": "BlockRemoved", "block_hashes": [21], "medium": "GPU"},
                {"type": "AllBlocksCleared"},
            ]
        )
    )

    assert message.events == (
        BlockStored((21,), 20, tuple(range(16)), 16, 3, "GPU", "sql-adapter"),
        BlockRemoved((21,), "GPU"),
        AllBlocksCleared(),
    )


def test_optional_trailing_fields_may_be_absent_group_and_kind_are_kept_and_extra_ones_ignored() -> None:
    message = decode_message(
        frames(
            [
                ["BlockStored", [1], None, [5] * 4, 4],  # vLLM before lora_id / medium / lora_name
                ["BlockStored", [2], 1, [6] * 4, 4, None, "GPU", None, [["mm-hash"]], 0, "full_attention", None],
                ["BlockRemoved", [1]],
                ["BlockRemoved", [2], "GPU", 0],
                ["AllBlocksCleared", "something newer"],
                {"type": "BlockRemoved", "block_hashes": [3], "group_idx": 1},
            ],
            payload=None,
        )
    )

    assert message.events == (
        BlockStored((1,), None, (5,) * 4, 4),
        BlockStored((2,), 1, (6,) * 4, 4, None, "GPU", None, group_idx=0, kind="full_attention"),
        BlockRemoved((1,)),
        BlockRemoved((2,), "GPU", group_idx=0),
        AllBlocksCleared(),
        BlockRemoved((3,), group_idx=1),
    )


def test_the_data_parallel_rank_is_optional_and_unknown_event_types_are_skipped() -> None:
    message = decode_message(frames([], payload=[2.0, [["BlockEvictedToDisk", [1]], ["AllBlocksCleared"]]]))

    assert message.data_parallel_rank is None
    assert message.events == (AllBlocksCleared(),)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, 0),
        ((1 << 64) - 1, (1 << 64) - 1),
        (-1, (1 << 64) - 1),
        (-(1 << 63), 1 << 63),
        (b"\x01\x02", 0x0102),
        (bytes(range(32)), int.from_bytes(bytes(range(24, 32)), "big")),  # a sha256 digest: its last 8 bytes
    ],
)
def test_hashes_are_unsigned_64_bit(raw: Any, expected: int) -> None:
    assert block_hash(raw) == expected
    message = decode_message(frames([["BlockStored", [raw], raw, [1] * 2, 2]]))
    stored = message.events[0]
    assert isinstance(stored, BlockStored)
    assert stored.block_hashes == (expected,)
    assert stored.parent_block_hash == expected


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([TOPIC, struct.pack(">Q", 0)], "expected 3 frames"),
        ([b"kv@10.0.0.7:8000", struct.pack(">Q", 0), msgpack.packb([0.0, []])], "is not kv@<ip:port>@<model>"),
        ([b"\xff\xfe", struct.pack(">Q", 0), msgpack.packb([0.0, []])], "not UTF-8"),
        ([TOPIC, b"\x00\x01", msgpack.packb([0.0, []])], "2 bytes, not 8"),
        ([TOPIC, struct.pack(">Q", 0), b"\xc1"], "not msgpack"),
        ([TOPIC, struct.pack(">Q", 0), msgpack.packb({"ts": 0})], "not an array"),
        ([TOPIC, struct.pack(">Q", 0), msgpack.packb(["now", []])], "timestamp is not a number"),
        ([TOPIC, struct.pack(">Q", 0), msgpack.packb([0.0, {}])], "events are not an array"),
        ([TOPIC, struct.pack(">Q", 0), msgpack.packb([0.0, [], "0"])], "rank is not a non-negative integer"),
    ],
)
def test_malformed_envelopes_say_what_is_wrong(parts: list[bytes], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode_message(parts)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("BlockStored", "neither a tagged array nor a map"),
        ([], "neither a tagged array nor a map"),
        ([7, [1]], "no type"),
        (["BlockStored", [1], None, [1, 2], 0], "positive block_size"),
        (["BlockStored", [1], None, [1, 2], "16"], "positive block_size"),
        (["BlockStored", "12", None, [1, 2], 2], "block_hashes is not an array"),
        (["BlockStored", [1.5], None, [1, 2], 2], "float, not an integer or bytes"),
        (["BlockStored", [1], None, [1, "x"], 2], "token_ids is not an array of integers"),
        (["BlockStored", [1], None, [1, 2], 2, "7"], "lora_id is a str"),
        (["BlockStored", [1], None, [1, 2], 2, None, 3], "medium is a int"),
        (["BlockRemoved", [b""]], "bytes, not an integer or bytes"),
        ({"type": "BlockStored", "block_hashes": [1], "token_ids": [1]}, "positive block_size"),
    ],
)
def test_malformed_events_fail_the_message(event: Any, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode_message(frames([["AllBlocksCleared"], event]))


@pytest.mark.parametrize("raw", [1 << 64, -(1 << 63) - 1])
def test_a_hash_beyond_64_bits_is_refused(raw: int) -> None:
    with pytest.raises(MalformedMessage, match="out of the 64-bit range"):
        block_hash(raw)


def test_a_model_name_may_contain_the_separator() -> None:
    assert parse_topic("kv@[::1]:8000@org/model@v2") == ("[::1]:8000", "org/model@v2")
