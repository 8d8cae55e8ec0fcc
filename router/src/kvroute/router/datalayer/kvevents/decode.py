"""vLLM's KV-event messages, from ZMQ frames to the framework's event types.

    frame 0  topic    UTF-8 `kv@<ip:port>@<model>`; the `ip:port` is the endpoint's id in the pool
    frame 1  seq      8 bytes, big-endian unsigned, +1 per message of one publisher
    frame 2  payload  msgpack [timestamp, events, data_parallel_rank?]

Each event is a tagged array, or (vLLM's newer map format) a map with the tag under `type` and the fields by name:

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id?, medium?, lora_name?,
     extra_keys?, group_idx?, kv_cache_spec_kind?, kv_cache_spec_sliding_window?, ...]
    ["BlockRemoved", block_hashes, medium?, group_idx?, ...]
    ["AllBlocksCleared", ...]

vLLM 0.34 sends the map form (its events are tagged msgspec structs, not `array_like`, with `omit_defaults`:
`group_idx` and the fields after it are absent when unset); the array form is older vLLM's and llm-d's simulator's.
`group_idx` (the KV-cache group of a hybrid model) and `kv_cache_spec_kind` are kept; other fields
(`extra_keys`, `locality`, `session_id`, ...) and map keys not named are ignored, as are events of another type
(a newer engine's). A hash is an unsigned or signed 64-bit integer (a negative one is read as its
two's complement), or bytes, of which the last 8 are read big-endian. Anything else (a frame missing, a topic
without model, a field of the wrong type, a hash out of range) raises `MalformedMessage` saying what.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import msgpack

from kvroute.router.framework import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

_U64 = (1 << 64) - 1
_I64_MIN = -(1 << 63)
_STORED_FIELDS = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
    "kv_cache_spec_kind",
)
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")


class MalformedMessage(ValueError):
    """A message that does not follow the wire format; the message says how."""


@dataclass(frozen=True, slots=True)
class KVEventMessage:
    topic: str
    endpoint_id: str
    model: str
    seq: int
    timestamp: float
    events: tuple[KVEvent, ...]
    data_parallel_rank: int | None

    @property
    def rank(self) -> int:
        """The publishing engine's data-parallel rank (0 when the message does not say)."""
        return self.data_parallel_rank or 0


def parse_topic(topic: str) -> tuple[str, str]:
    """`(endpoint id, model)` of a topic `<prefix>@<ip:port>@<model>`."""
    parts = topic.split("@", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise MalformedMessage(f"topic {topic!r} is not kv@<ip:port>@<model>")
    return parts[1], parts[2]


def decode_message(frames: Sequence[bytes]) -> KVEventMessage:
    if len(frames) != 3:
        raise MalformedMessage(f"expected 3 frames (topic, sequence, payload), got {len(frames)}")
    raw_topic, raw_seq, raw_payload = frames
    try:
        topic = bytes(raw_topic).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage("the topic is not UTF-8") from None
    endpoint_id, model = parse_topic(topic)
    if len(raw_seq) != 8:
        raise MalformedMessage(f"the sequence number has {len(raw_seq)} bytes, not 8")
    seq = int.from_bytes(raw_seq, "big")
    try:
        payload = msgpack.unpackb(raw_payload, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise MalformedMessage(f"the payload is not msgpack: {exc}") from None
    if not isinstance(payload, list) or len(payload) < 2:
        raise MalformedMessage("the payload is not an array [timestamp, events, data_parallel_rank?]")
    timestamp, raw_events = payload[0], payload[1]
    rank = payload[2] if len(payload) > 2 else None
    if not _is_number(timestamp):
        raise MalformedMessage("the timestamp is not a number")
    if not isinstance(raw_events, list):
        raise MalformedMessage("the events are not an array")
    if rank is not None and (not _is_int(rank) or rank < 0):
        raise MalformedMessage("the data parallel rank is not a non-negative integer")
    events = tuple(event for event in map(decode_event, raw_events) if event is not None)
    return KVEventMessage(topic, endpoint_id, model, seq, float(timestamp), events, rank)


def decode_event(raw: Any) -> KVEvent | None:
    """One event of either form; None for an event of a type this router does not know."""
    if isinstance(raw, list) and raw:
        tag, values = raw[0], raw[1:]
        fields: Mapping[str, Any] = dict(
            zip(_STORED_FIELDS if tag == "BlockStored" else _REMOVED_FIELDS, values, strict=False)
        )
    elif isinstance(raw, Mapping):
        tag, fields = raw.get("type"), raw
    else:
        raise MalformedMessage("an event is neither a tagged array nor a map")
    if tag == "BlockStored":
        size = fields.get("block_size")
        if not _is_int(size) or size <= 0:
            raise MalformedMessage("BlockStored without a positive block_size")
        parent = fields.get("parent_block_hash")
        return BlockStored(
            block_hashes=_hashes(fields.get("block_hashes")),
            parent_block_hash=None if parent is None else block_hash(parent),
            token_ids=_token_ids(fields.get("token_ids")),
            block_size=size,
            lora_id=_optional(fields.get("lora_id"), int, "lora_id"),
            medium=_optional(fields.get("medium"), str, "medium"),
            lora_name=_optional(fields.get("lora_name"), str, "lora_name"),
            group_idx=_optional(fields.get("group_idx"), int, "group_idx"),
            kind=_optional(fields.get("kv_cache_spec_kind"), str, "kv_cache_spec_kind"),
        )
    if tag == "BlockRemoved":
        return BlockRemoved(
            _hashes(fields.get("block_hashes")),
            _optional(fields.get("medium"), str, "medium"),
            _optional(fields.get("group_idx"), int, "group_idx"),
        )
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    if not isinstance(tag, str):
        raise MalformedMessage("an event has no type")
    return None


def block_hash(value: Any) -> int:
    """A hash as an unsigned 64-bit integer."""
    if _is_int(value):
        if _I64_MIN <= value <= _U64:
            return int(value) & _U64
        raise MalformedMessage(f"block hash {value} is out of the 64-bit range")
    if isinstance(value, bytes) and value:
        return int.from_bytes(value[-8:], "big")
    raise MalformedMessage(f"a block hash is a {type(value).__name__}, not an integer or bytes")


def _hashes(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise MalformedMessage("block_hashes is not an array")
    return tuple(map(block_hash, value))


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(_is_int(t) for t in value):
        raise MalformedMessage("token_ids is not an array of integers")
    return tuple(value)


def _optional(value: Any, kind: type, name: str) -> Any:
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise MalformedMessage(f"{name} is a {type(value).__name__}, not {kind.__name__}")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
