"""KV-cache events as vLLM publishes them (BlockStored / BlockRemoved / AllBlocksCleared).

The block manager records them; the publisher (`kvroute.simulator.kv_publisher`) serialises them, as a hybrid
model's KV-cache groups (`KVCacheGroup`) when configured.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_name: str | None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared

KINDS = ("full_attention", "sliding_window")


@dataclass(frozen=True, slots=True)
class KVCacheGroup:
    """One KV-cache group of a hybrid model: its attention kind and, for a sliding window, its size in tokens."""

    kind: str = "full_attention"
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown KV-cache group kind {self.kind!r}; known: {', '.join(KINDS)}")
        if (self.kind == "sliding_window") != (self.sliding_window is not None and self.sliding_window > 0):
            raise ValueError("a sliding_window group needs a positive window, and only it has one")

    @classmethod
    def parse(cls, text: str) -> KVCacheGroup:
        """`full_attention` or `sliding_window:<tokens>`."""
        kind, _, window = text.partition(":")
        try:
            return cls(kind, int(window) if window else None)
        except ValueError as exc:
            raise ValueError(f"invalid KV-cache group {text!r}: {exc}") from None
