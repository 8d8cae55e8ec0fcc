"""The precise prefix index: which endpoint's KV cache holds which prefix, as its engine reports it in KV events.

Per endpoint e (slot bit `b_e`, as in `prefix.index`):

    blocks[e]:       (rank, engine block hash) -> request key (`prefix.request_keys`), least recently stored first
    refs[e]:         request key -> how many of e's engine blocks map to it
    speculative[e]:  request key -> expiry, for prompts routed to e that its events have not confirmed yet
    owners:          request key -> bitmask of the endpoints holding it (in refs[e] or speculative[e])

An endpoint may run several data-parallel engines (ranks), each with its own cache and its own block hashes (two
ranks holding one prompt send the same hashes): an engine block is identified by (rank, hash), and e holds a key
while any of its ranks does. The (rank, hash) pair is one int, `hash | rank << 64`, which for rank 0 is the hash
itself (no memory spent on endpoints without data parallelism).

Hybrid models (vLLM's KV-cache groups): each group of a rank publishes the same hashes for the same tokens, with
its `group_idx` and (on stores) its attention kind. Only one group per rank is indexed, the match group: the
lowest-numbered full-attention group (kind `full_attention`, `mla_attention` or `sink_full_attention`; a store
that names no kind counts as full attention when its group is 0 or unset). A full-attention group holds the whole
prefix, which a sliding-window or Mamba group does not, so the other groups' stores and removals are ignored (a
sliding window freeing its blocks must not remove the prefix). The endpoint's block size is the match group's.
A store of the match group with a smaller block size than the group's is a partial-block entry (vLLM's
`cache_partial_block`: one hash-block inside a larger cache block) and is ignored for matching.

Events of endpoint e and rank r (`apply`, in the engine's order):

- `BlockStored`: the keys of the stored blocks are chained from the key of their parent block (looked up in
  `blocks[e]`; no parent: the root of the event's adapter, else of the topic's model) over the event's token ids;
  each engine hash is recorded against its key and e joins the key's owners. A block whose parent was never seen
  (an event missed, or forgotten here), or that has no tokens, cannot be keyed: it is counted and skipped.
- `BlockRemoved`: each engine hash is looked up in `blocks[e]` and its key's count drops; e leaves the key's
  owners only when no other engine block of e maps to it (engines may hold one prefix twice, under different
  hashes), and no speculative entry holds it.
- `AllBlocksCleared`: everything of e's rank r is dropped (and e's speculative entries).

Only the GPU tier is indexed: events of other media (CPU offload) are ignored, their blocks being no prefix hit
without a transfer.

Bounds: each endpoint keeps at most `capacity` engine blocks (`set_capacity`, else `default_capacity`), the
least recently stored going first (within one event the sequence's tail first); all endpoints together at most
`max_entries`, the excess taken from the endpoint holding the most. An engine announces every block it evicts, so
with a capacity above its cache size (the scorer's default is twice `num_gpu_blocks`) only entries whose
`BlockRemoved` was lost are ever evicted here.

Memory, measured on CPython 3.11 (tracemalloc, 1M (endpoint, block) entries on 8 endpoints, owners included): 242
bytes per entry when no two endpoints hold the same prefix, 174 when all 8 hold the same ones; the default
`max_entries` (4M) bounds the index near 1 GB.

Speculative entries: `add_speculative` marks keys as held by e until an expiry; a real `BlockStored` of the key
confirms it (the entry is replaced by the real one), `AllBlocksCleared` drops them, and expired ones are dropped
lazily at the next call that takes a `now`, oldest first (one queue in expiry order: O(1) per entry).

Matching (`match`) is the approximate index's bitmask walk (`prefix.index.longest_runs`): O(blocks).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence

from kvroute.router.framework import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from kvroute.router.framework.kv_events import GPU_MEDIUM
from kvroute.router.plugins.prefix.index import EndpointSlots, clear_bit, longest_runs
from kvroute.router.plugins.prefix.request_keys import chain_keys, root_key

DEFAULT_CAPACITY = 131_072  # engine blocks per endpoint when its cache size is not known
DEFAULT_MAX_ENTRIES = 4_000_000
FULL_ATTENTION_KINDS = frozenset({"full_attention", "mla_attention", "sink_full_attention"})
_RANK_SHIFT = 64


class _Entries:
    """What the index holds for one endpoint."""

    __slots__ = ("bit", "block_size", "blocks", "capacity", "groups", "refs", "speculative")

    def __init__(self, bit: int, capacity: int) -> None:
        self.bit = bit
        self.capacity = capacity
        self.block_size: int | None = None
        self.blocks: OrderedDict[int, int] = OrderedDict()
        self.refs: dict[int, int] = {}
        self.speculative: dict[int, float] = {}
        self.groups: dict[int, tuple[int, int]] = {}  # rank -> (match group, its block size)


class PreciseIndex:
    def __init__(self, *, default_capacity: int = DEFAULT_CAPACITY, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if default_capacity < 1 or max_entries < 1:
            raise ValueError("default_capacity and max_entries must be positive")
        self._default_capacity = default_capacity
        self._max_entries = max_entries
        self._owners: dict[int, int] = {}
        self._slots = EndpointSlots()
        self._entries: dict[str, _Entries] = {}
        self._capacities: dict[str, int] = {}
        self._expiries: deque[tuple[float, str, int]] = deque()
        self._blocks = 0  # sum of len(blocks) over endpoints
        self._speculative = 0  # sum of len(speculative) over endpoints

    # Reading.

    def __len__(self) -> int:
        """Distinct keys held by at least one endpoint."""
        return len(self._owners)

    @property
    def entries(self) -> int:
        """(endpoint, engine block) entries plus speculative entries."""
        return self._blocks + self._speculative

    def blocks_of(self, endpoint_id: str) -> int:
        """Engine blocks held for the endpoint."""
        entries = self._entries.get(endpoint_id)
        return len(entries.blocks) if entries is not None else 0

    def block_size_of(self, endpoint_id: str) -> int | None:
        """The block size of the endpoint's match group (its full blocks), None before any was stored."""
        entries = self._entries.get(endpoint_id)
        return entries.block_size if entries is not None else None

    def match(self, keys: Sequence[int], endpoint_ids: Sequence[str], now: float) -> dict[str, int]:
        """Consecutive keys from the first held by each of `endpoint_ids` that holds at least the first."""
        self._expire(now)
        return longest_runs(keys, self._owners, self._slots.mask(endpoint_ids), self._slots)

    # Writing.

    def set_capacity(self, endpoint_id: str, capacity: int) -> None:
        """Engine blocks kept for the endpoint from now on (until it is removed)."""
        capacity = max(1, capacity)
        self._capacities[endpoint_id] = capacity
        entries = self._entries.get(endpoint_id)
        if entries is not None and entries.capacity != capacity:
            entries.capacity = capacity
            self._trim(entries, capacity)

    def apply(self, endpoint_id: str, model: str, events: Iterable[KVEvent], now: float, rank: int = 0) -> int:
        """Applies one message's events of the endpoint's data-parallel rank `rank`, in order; returns the stored
        blocks it could not key."""
        self._expire(now)
        entries = self._entries_of(endpoint_id)
        rank_bits = rank << _RANK_SHIFT
        skipped = 0
        for event in events:
            if isinstance(event, BlockStored):
                skipped += self._store(entries, model, event, rank)
            elif isinstance(event, BlockRemoved):
                group = entries.groups.get(rank)
                if (event.medium is None or event.medium == GPU_MEDIUM) and (event.group_idx or 0) == (
                    group[0] if group is not None else 0
                ):
                    for engine_hash in event.block_hashes:
                        key = entries.blocks.pop(engine_hash | rank_bits, None)
                        if key is not None:
                            self._blocks -= 1
                            self._unref(entries, key)
            elif isinstance(event, AllBlocksCleared):
                self._clear(entries, rank)
        if self._blocks > self._max_entries:
            self._evict_excess()
        return skipped

    def add_speculative(self, endpoint_id: str, keys: Sequence[int], expires: float) -> None:
        """Marks `keys` as held by the endpoint until `expires` (unless real events confirm or clear them)."""
        entries = self._entries_of(endpoint_id)
        owners, refs, speculative, bit = self._owners, entries.refs, entries.speculative, entries.bit
        append = self._expiries.append
        for key in keys:
            if key in refs:
                continue
            if key not in speculative:
                owners[key] = owners.get(key, 0) | bit
                self._speculative += 1
            speculative[key] = expires
            append((expires, endpoint_id, key))

    def clear_endpoint(self, endpoint_id: str) -> None:
        """Drops everything the endpoint holds (as `AllBlocksCleared` would)."""
        entries = self._entries.get(endpoint_id)
        if entries is not None:
            self._clear(entries)

    def remove_endpoint(self, endpoint_id: str) -> None:
        """Forgets the endpoint entirely: entries, capacity and slot."""
        self._capacities.pop(endpoint_id, None)
        entries = self._entries.pop(endpoint_id, None)
        if entries is not None:
            self._clear(entries)
            self._slots.release(endpoint_id)

    # Internals.

    def _entries_of(self, endpoint_id: str) -> _Entries:
        entries = self._entries.get(endpoint_id)
        if entries is None:
            capacity = self._capacities.get(endpoint_id, self._default_capacity)
            entries = self._entries[endpoint_id] = _Entries(self._slots.acquire(endpoint_id), capacity)
        return entries

    def _match_group(self, entries: _Entries, event: BlockStored, rank: int) -> bool:
        """Whether the store is of the rank's match group (and of full blocks); learns the group and its size."""
        group, kind, size = event.group_idx or 0, event.kind, event.block_size
        if not (kind in FULL_ATTENTION_KINDS or (kind is None and group == 0)):
            return False
        known = entries.groups.get(rank)
        if known is None or group < known[0]:
            if known is not None:  # a lower full-attention group shows up: it becomes the one indexed
                self._clear(entries, rank, speculative=False)
            entries.groups[rank] = (group, size)
        elif group > known[0]:
            return False
        elif size != known[1]:
            if size < known[1]:
                return False  # a partial block of the group
            entries.groups[rank] = (group, size)
        entries.block_size = entries.groups[rank][1]
        return True

    def _store(self, entries: _Entries, model: str, event: BlockStored, rank: int) -> int:
        if event.medium is not None and event.medium != GPU_MEDIUM:
            return 0
        hashes, size = event.block_hashes, event.block_size
        if size <= 0:
            return len(hashes)
        if not self._match_group(entries, event, rank):
            return 0
        rank_bits = rank << _RANK_SHIFT
        if event.parent_block_hash is None:
            if event.lora_name is None and event.lora_id is not None:
                return len(hashes)  # an adapter known only by its number: its root cannot be named
            parent = root_key(event.lora_name or model)
        else:
            found = entries.blocks.get(event.parent_block_hash | rank_bits)
            if found is None:
                return len(hashes)
            parent = found
        try:
            keys = chain_keys(event.token_ids, size, parent, len(hashes))
        except OverflowError:  # a token id outside 0..2^32-1
            return len(hashes)
        blocks, refs, owners, bit = entries.blocks, entries.refs, self._owners, entries.bit
        speculative = entries.speculative
        # Reversed, so a sequence's first block ends most recent and its tail is evicted first, as engines do: a
        # chain that loses its head is useless for matching.
        for raw_hash, key in reversed(list(zip(hashes, keys, strict=False))):
            engine_hash = raw_hash | rank_bits
            old = blocks.get(engine_hash)
            if old is not None:
                blocks.move_to_end(engine_hash)
                if old == key:
                    continue
                self._unref(entries, old)
            else:
                self._blocks += 1
            blocks[engine_hash] = key
            held = refs.get(key, 0)
            refs[key] = held + 1
            if held:
                continue
            if speculative.pop(key, None) is None:
                owners[key] = owners.get(key, 0) | bit
            else:
                self._speculative -= 1
        self._trim(entries, entries.capacity)
        return len(hashes) - len(keys)

    def _unref(self, entries: _Entries, key: int) -> None:
        refs = entries.refs
        held = refs[key] - 1
        if held:
            refs[key] = held
        else:
            del refs[key]
            if key not in entries.speculative:
                clear_bit(self._owners, key, entries.bit)

    def _trim(self, entries: _Entries, capacity: int) -> None:
        blocks = entries.blocks
        while len(blocks) > capacity:
            _, key = blocks.popitem(last=False)
            self._blocks -= 1
            self._unref(entries, key)

    def _clear(self, entries: _Entries, rank: int | None = None, *, speculative: bool = True) -> None:
        """Drops the blocks of `rank` (of every rank when None), and with `speculative` the endpoint's
        speculative entries."""
        owners, bit = self._owners, entries.bit
        if rank is not None and any(other != rank for other in entries.groups):
            entries.groups.pop(rank, None)
            blocks = entries.blocks
            for engine_hash in [h for h in blocks if h >> _RANK_SHIFT == rank]:
                self._blocks -= 1
                self._unref(entries, blocks.pop(engine_hash))
        else:
            entries.groups.clear()
            for key in entries.refs:
                if key not in entries.speculative:
                    clear_bit(owners, key, bit)
            self._blocks -= len(entries.blocks)
            entries.blocks.clear()
            entries.refs.clear()
        if speculative:
            for key in entries.speculative:
                if key not in entries.refs:
                    clear_bit(owners, key, bit)
            self._speculative -= len(entries.speculative)
            entries.speculative.clear()

    def _evict_excess(self) -> None:
        while self._blocks > self._max_entries:
            largest = max(self._entries.values(), key=lambda e: len(e.blocks))
            self._trim(largest, max(0, len(largest.blocks) - (self._blocks - self._max_entries)))

    def _expire(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expires, endpoint_id, key = expiries.popleft()
            entries = self._entries.get(endpoint_id)
            if entries is not None and entries.speculative.get(key) == expires:
                del entries.speculative[key]
                self._speculative -= 1
                if key not in entries.refs:
                    clear_bit(self._owners, key, entries.bit)
