"""Publishes the engine's KV-cache events over ZMQ in vLLM's wire format.

Transport: one ZMQ PUB socket. By default it binds `endpoint` and subscribers connect (vLLM's default, e.g.
`tcp://*:5557`); with `bind=False` it connects to a subscriber that binds (centralised mode: the router binds
one SUB socket and every engine connects to it).

Message: one multipart message per non-empty batch of events,

    frame 0  topic       UTF-8, e.g. b"kv@10.0.0.7:8000@meta-llama/Llama-3.1-8B-Instruct"
    frame 1  seq         8 bytes, big-endian unsigned; 0 for the first message, +1 per message
    frame 2  payload     msgpack array [timestamp, events, data_parallel_rank]

`timestamp` is a float64 (seconds, the engine clock), `events` an array of events in the order the engine
recorded them, `data_parallel_rank` the publishing engine's rank (0 without data parallelism). Data-parallel
rank r publishes on the configured endpoint's port + r, as vLLM does (`offset_endpoint`), under the same topic,
numbering its messages from 0. Each event is a tagged array (the default):

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name]
    ["BlockRemoved", block_hashes, medium]
    ["AllBlocksCleared"]

or, with `map_format=True`, a map with the tag under `type` and the same fields by name:

    {"type": "BlockStored", "block_hashes": [...], "parent_block_hash": h | nil, "token_ids": [...],
     "block_size": 16, "lora_id": nil | int, "medium": "GPU", "lora_name": nil | str}
    {"type": "BlockRemoved", "block_hashes": [...], "medium": "GPU"}
    {"type": "AllBlocksCleared"}

Fields:
- `block_hashes`: unsigned 64-bit chained block hashes (msgpack uint64). A BlockStored lists consecutive full
  blocks of one sequence; `parent_block_hash` is the hash of the block before the first of them, nil when the
  first is the sequence's first block, so a subscriber can chain a prefix across messages.
- `token_ids`: the tokens of exactly those blocks, `len(block_hashes) x block_size` of them.
- `lora_id`: nil for the base model, otherwise the adapter's integer id: taken from `lora_ids` when given,
  else 1, 2, 3... in the order adapters first appear in this publisher's events (as a server numbers adapters
  in load order). `lora_name` is the adapter's name.
- `medium`: always "GPU"; the simulator has no offload tiers.

Hybrid models (`groups`, e.g. `(KVCacheGroup("full_attention"), KVCacheGroup("sliding_window", 64))`): as vLLM
0.34 does, every store is published once per KV-cache group, with the same hashes, and the events carry
`extra_keys` (nil), `group_idx` and, on stores, `kv_cache_spec_kind` and `kv_cache_spec_sliding_window`:

    ["BlockStored", ..., lora_name, nil, group_idx, kind, sliding_window]     ["BlockRemoved", hashes, "GPU", group_idx]

The engine's own blocks are group 0's (which must be full attention). A sliding-window group of window W tokens
keeps, of each stored run, the blocks that W covers from its end (ceil(W / block_size)), and announces the
removal of the others in the same message, as a window that slides past them; a removal of group 0 removes the
blocks the other groups still hold too.

Delivery is best effort, as in vLLM. A subscriber that joins late misses what was sent before (ZMQ's slow
joiner), and a message sent while no subscriber is connected reaches nobody. The socket does not drop silently
when a subscriber falls behind: a message that cannot be queued for every subscriber within the send
high-water mark is not sent at all, `dropped` counts it and its sequence number is skipped, so subscribers see
the gap.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import msgpack
import zmq

from kvroute.simulator.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVCacheGroup, KVEvent

MEDIUM = "GPU"
_SEQ = struct.Struct(">Q")


def offset_endpoint(endpoint: str, rank: int) -> str:
    """vLLM's `ZmqEventPublisher.offset_endpoint_port`: rank r's endpoint is the port + r (a port 0 is left for
    the OS to pick); `inproc`/`ipc` endpoints get a `_dp<r>` suffix."""
    if rank == 0 or not endpoint.startswith("tcp://"):
        return endpoint if rank == 0 else f"{endpoint}_dp{rank}"
    base, _, port = endpoint.rpartition(":")
    return endpoint if int(port) == 0 else f"{base}:{int(port) + rank}"


class KVEventPublisher:
    def __init__(
        self,
        endpoint: str,
        topic: str,
        *,
        bind: bool = True,
        map_format: bool = False,
        lora_ids: Mapping[str, int] | None = None,
        send_hwm: int = 1000,
        data_parallel_rank: int = 0,
        groups: Sequence[KVCacheGroup] = (),
    ) -> None:
        if groups and groups[0].kind != "full_attention":
            raise ValueError("KV-cache group 0 holds the engine's blocks: it must be full_attention")
        self.topic = topic
        self.map_format = map_format
        self.data_parallel_rank = data_parallel_rank
        self.groups = tuple(groups)
        self._held: list[set[int]] = [set() for _ in self.groups]  # per group: hashes still held
        self.dropped = 0
        self._topic = topic.encode()
        self._seq = 0
        self._lora_ids = dict(lora_ids or {})
        socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SNDHWM, send_hwm)
            socket.setsockopt(zmq.XPUB_NODROP, 1)  # report a full queue (EAGAIN) instead of dropping silently
            if bind:
                socket.bind(offset_endpoint(endpoint, data_parallel_rank))
            else:
                socket.connect(offset_endpoint(endpoint, data_parallel_rank))
        except BaseException:
            socket.close(linger=0)
            raise
        self._socket = socket

    @property
    def endpoint(self) -> str:
        """The last bound or connected endpoint, a wildcard port (`tcp://127.0.0.1:*`) resolved."""
        return self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def next_seq(self) -> int:
        return self._seq

    def publish(self, events: Sequence[KVEvent], timestamp: float) -> None:
        """Send `events` as one message; nothing is sent for an empty list. Never blocks."""
        if not events:
            return
        if self._socket.closed:
            raise RuntimeError("the KV event publisher is closed")
        encoded = [self._encode(*grouped) for event in events for grouped in self._per_group(event)]
        payload = msgpack.packb([timestamp, encoded, self.data_parallel_rank])
        seq = self._seq
        self._seq += 1
        try:
            self._socket.send_multipart([self._topic, _SEQ.pack(seq), payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _per_group(self, event: KVEvent) -> list[tuple[KVEvent, int | None]]:
        """The event as each KV-cache group publishes it: (event, group index), group None without groups."""
        if not self.groups:
            return [(event, None)]
        out: list[tuple[KVEvent, int | None]] = []
        for index, (group, held) in enumerate(zip(self.groups, self._held, strict=True)):
            match event:
                case BlockStored():
                    out.append((event, index))
                    hashes = event.block_hashes
                    keep = len(hashes)
                    if group.sliding_window is not None:
                        keep = min(keep, -(-group.sliding_window // event.block_size))
                    held.update(hashes[len(hashes) - keep :])
                    if keep < len(hashes):
                        gone = hashes[: len(hashes) - keep]
                        held.difference_update(gone)
                        out.append((BlockRemoved(gone), index))
                case BlockRemoved():
                    gone = tuple(h for h in event.block_hashes if h in held) if index else event.block_hashes
                    held.difference_update(gone)
                    if gone:
                        out.append((BlockRemoved(gone), index))
                case AllBlocksCleared():
                    held.clear()
                    if index == 0:
                        out.append((event, None))
        return out

    def _encode(self, event: KVEvent, group_idx: int | None) -> list[Any] | dict[str, Any]:
        fields: dict[str, Any]
        match event:
            case BlockStored():
                tag = "BlockStored"
                fields = {
                    "block_hashes": event.block_hashes,
                    "parent_block_hash": event.parent_block_hash,
                    "token_ids": event.token_ids,
                    "block_size": event.block_size,
                    "lora_id": self._lora_id(event.lora_name),
                    "medium": MEDIUM,
                    "lora_name": event.lora_name,
                }
                if group_idx is not None:
                    group = self.groups[group_idx]
                    fields["extra_keys"] = None
                    fields["group_idx"] = group_idx
                    fields["kv_cache_spec_kind"] = group.kind
                    fields["kv_cache_spec_sliding_window"] = group.sliding_window
            case BlockRemoved():
                tag = "BlockRemoved"
                fields = {"block_hashes": event.block_hashes, "medium": MEDIUM}
                if group_idx is not None:
                    fields["group_idx"] = group_idx
            case AllBlocksCleared():
                tag = "AllBlocksCleared"
                fields = {}
        if self.map_format:
            return {"type": tag, **fields}
        return [tag, *fields.values()]

    def _lora_id(self, lora_name: str | None) -> int | None:
        if lora_name is None:
            return None
        lora_id = self._lora_ids.get(lora_name)
        if lora_id is None:
            lora_id = self._lora_ids[lora_name] = max(self._lora_ids.values(), default=0) + 1
        return lora_id
