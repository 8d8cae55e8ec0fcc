"""KV-cache events as model servers publish them, and the contract of a plugin that consumes them.

The data layer decodes the engines' messages (vLLM's wire format, `kvroute.router.datalayer.kvevents`) into these
types and hands each message's events, in the order the engine published them, to every `KVEventsConsumer` of the
configuration in force. Hashes are the engine's own 64-bit block hashes (unsigned); they identify blocks between
the events of one endpoint and mean nothing to the router otherwise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from kvroute.router.framework.endpoint import Endpoint
from kvroute.router.framework.plugins import Plugin

GPU_MEDIUM = "GPU"


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Consecutive full blocks of one sequence entered the cache. `parent_block_hash` is the block before the
    first of them (None: the first is the sequence's first block); `token_ids` are the blocks' tokens,
    `block_size` per block. `lora_name` (or only `lora_id`, from older engines) names the adapter whose KV the
    blocks hold; `medium` is the cache tier (None or "GPU": the engine's GPU cache). `group_idx` is the KV-cache
    group of a hybrid model (None: the model has one group), `kind` that group's attention kind as vLLM names it
    (`full_attention`, `sliding_window`, `mamba`, ...; None: not said)."""

    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    group_idx: int | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """Blocks left the cache (of tier `medium`, None meaning the GPU cache; of KV-cache group `group_idx`)."""

    block_hashes: tuple[int, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The engine emptied its cache."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class KVEventsSubscription:
    """Where a consumer's events come from; exactly one of `bind` and `endpoint_port` is set.

    - `bind`: the router binds this ZMQ endpoint (e.g. `tcp://*:5557`) and every engine connects to it;
    - `endpoint_port`: the router connects to `tcp://<endpoint address>:<endpoint_port>` for every endpoint of
      the pool, following it (connect on add, disconnect on remove); each engine binds that port.

    An endpoint running `data_parallel_size` engines (vLLM `--data-parallel-size`) publishes from each rank r on
    the configured port + r (vLLM offsets the port for bind and connect alike): the router binds, or connects to,
    every one of those ports.

    Only messages whose topic starts with `topic_filter` are received. Consumers with equal subscriptions share
    one socket."""

    bind: str | None = None
    endpoint_port: int | None = None
    topic_filter: str = "kv@"
    data_parallel_size: int = 1

    def __post_init__(self) -> None:
        if (self.bind is None) == (self.endpoint_port is None):
            raise ValueError("a KV events subscription needs exactly one of bind and endpoint_port")
        if self.data_parallel_size < 1:
            raise ValueError("data_parallel_size must be at least 1")


class KVEventsConsumer(Plugin, ABC):
    """A plugin that keeps state from the engines' KV events (e.g. which endpoint caches which prefix).

    The router subscribes as `kv_events_subscription()` says while the plugin is part of the configuration in
    force; a reload that keeps the same instance keeps the subscription and its socket."""

    @abstractmethod
    def kv_events_subscription(self) -> KVEventsSubscription:
        """How to receive the events; read when the plugin enters service and must not change afterwards."""

    @abstractmethod
    def on_kv_events(self, endpoint: Endpoint, model: str, events: Sequence[KVEvent], rank: int = 0) -> int:
        """Called on the event loop with the events of one message from `endpoint`, in the engine's order; messages
        of one endpoint arrive in the order they were received. `model` is the one named by the message's topic
        (`kv@<ip:port>@<model>`); `rank` is the data-parallel rank of the endpoint's engine that published them
        (each rank has its own cache: its events, `AllBlocksCleared` included, concern only its own blocks). A
        publisher that restarted (its sequence number went back) is reported as an `AllBlocksCleared` ahead of its
        events. Returns how many stored blocks it could not use (e.g. their parent
        block was never seen), for the router's metrics. Must not block; an exception is logged and the next
        message is delivered as usual."""

    @abstractmethod
    def kv_index_entries(self) -> int:
        """How many entries the plugin holds, for the router's gauge."""
