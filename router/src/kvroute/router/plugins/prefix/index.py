"""The approximate prefix index: which endpoints were sent which prompt blocks, as far as this router knows.

    owners:  block hash -> integer bitmask of endpoints (endpoint slot s is bit `1 << s`)
    lru[e]:  the hashes recorded for endpoint e, least recently recorded first, at most `capacity` of them

Recording a request's hashes for an endpoint sets its bit on each hash and refreshes them in its LRU; when the
LRU exceeds its capacity the oldest hash is evicted and the endpoint's bit cleared from it (a hash no endpoint
owns is dropped). So the index holds at most `sum(capacity_e)` (endpoint, hash) pairs, whatever the traffic.

Matching (`longest_runs`) walks the request's hashes once, ANDing a running mask of candidate endpoints with each
hash's owners:

    mask_0 = candidates;  mask_{i+1} = mask_i & owners[h_i]

An endpoint whose bit is in `mask_i` but not in `mask_{i+1}` matched exactly `i` consecutive blocks; one still in
the mask after the last hash matched all of them. The walk stops as soon as the mask is empty, so it costs
O(blocks) big-integer ANDs plus one step per endpoint that leaves the mask, not O(blocks * endpoints).

Slots of removed endpoints (`remove`, when an endpoint leaves the pool) are reused, lowest first, to keep masks
short.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Mapping, Sequence

# For each byte value, the positions of its set bits: masks are decoded a byte at a time.
_BYTE_BITS = tuple(tuple(i for i in range(8) if value >> i & 1) for value in range(256))


class EndpointSlots:
    """Endpoint id <-> one bit of an integer mask; a released bit is handed out again, lowest first."""

    __slots__ = ("_bit_of", "_free", "_id_of", "_last_mask")

    def __init__(self) -> None:
        self._bit_of: dict[str, int] = {}
        self._id_of: list[str | None] = []  # slot -> endpoint id
        self._free: list[int] = []  # min-heap of released slots
        # The candidates rarely change between requests: remember the last list's mask (reset on any change).
        self._last_mask: tuple[tuple[str, ...], int] = ((), 0)

    def bit(self, endpoint_id: str) -> int:
        """The endpoint's bit, 0 if it has none."""
        return self._bit_of.get(endpoint_id, 0)

    def acquire(self, endpoint_id: str) -> int:
        """The endpoint's bit, allocating one if it has none."""
        bit = self._bit_of.get(endpoint_id)
        if bit is not None:
            return bit
        if self._free:
            slot = heapq.heappop(self._free)
            self._id_of[slot] = endpoint_id
        else:
            slot = len(self._id_of)
            self._id_of.append(endpoint_id)
        bit = 1 << slot
        self._bit_of[endpoint_id] = bit
        self._last_mask = ((), 0)
        return bit

    def release(self, endpoint_id: str) -> int:
        """Free the endpoint's bit and return it (0 if it had none)."""
        bit = self._bit_of.pop(endpoint_id, 0)
        if bit:
            slot = bit.bit_length() - 1
            self._id_of[slot] = None
            heapq.heappush(self._free, slot)
            self._last_mask = ((), 0)
        return bit

    def mask(self, endpoint_ids: Sequence[str]) -> int:
        """The bits of those of `endpoint_ids` that hold one."""
        ids = tuple(endpoint_ids)
        last_ids, last_mask = self._last_mask
        if ids == last_ids:
            return last_mask
        bit_of = self._bit_of
        mask = 0
        for endpoint_id in ids:
            mask |= bit_of.get(endpoint_id, 0)
        self._last_mask = (ids, mask)
        return mask

    def members(self, bits: int) -> list[str]:
        """The endpoints whose bits are set in `bits`, lowest slot first."""
        id_of = self._id_of
        members: list[str] = []
        for index, byte in enumerate(bits.to_bytes((bits.bit_length() + 7) // 8, "little")):
            if byte:
                base = index * 8
                for offset in _BYTE_BITS[byte]:
                    endpoint_id = id_of[base + offset]
                    if endpoint_id is not None:
                        members.append(endpoint_id)
        return members


def longest_runs(
    hashes: Sequence[int], owners: Mapping[int, int], candidates: int, slots: EndpointSlots
) -> dict[str, int]:
    """For each candidate endpoint (bits of `candidates`) that owns `hashes[0]`: how many hashes from the start it
    owns consecutively. Endpoints that own none are absent."""
    matched: dict[str, int] = {}
    mask = candidates
    if not mask:
        return matched
    get = owners.get
    for i, h in enumerate(hashes):
        kept = mask & get(h, 0)
        if kept != mask:
            if i:
                matched.update(dict.fromkeys(slots.members(mask ^ kept), i))
            mask = kept
            if not mask:
                return matched
    if hashes:
        matched.update(dict.fromkeys(slots.members(mask), len(hashes)))
    return matched


def clear_bit(owners: dict[int, int], h: int, bit: int) -> None:
    """Take `bit` off the hash's owners, dropping the hash once nobody owns it."""
    rest = owners[h] & ~bit
    if rest:
        owners[h] = rest
    else:
        del owners[h]


class PrefixIndex:
    __slots__ = ("_lrus", "_owners", "_slots")

    def __init__(self) -> None:
        self._owners: dict[int, int] = {}
        self._slots = EndpointSlots()
        self._lrus: dict[str, OrderedDict[int, None]] = {}

    def __len__(self) -> int:
        """Distinct hashes held for at least one endpoint."""
        return len(self._owners)

    def hashes_of(self, endpoint_id: str) -> int:
        """How many hashes the endpoint's LRU holds."""
        lru = self._lrus.get(endpoint_id)
        return len(lru) if lru is not None else 0

    def record(self, endpoint_id: str, hashes: Sequence[int], capacity: int) -> None:
        """Mark `hashes` as held by the endpoint and make them its most recent; evict beyond `capacity`."""
        bit = self._slots.acquire(endpoint_id)
        lru = self._lrus.setdefault(endpoint_id, OrderedDict())
        owners = self._owners
        # Reversed, so a prompt's first block ends most recent and its tail is evicted first: a chain that
        # loses its head is useless for matching, and engines free a sequence's blocks tail first too.
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                owners[h] = owners.get(h, 0) | bit
        while len(lru) > capacity:
            old, _ = lru.popitem(last=False)
            clear_bit(owners, old, bit)

    def match(self, hashes: Sequence[int], endpoint_ids: Sequence[str]) -> dict[str, int]:
        """Consecutive blocks matched from the start, for each of `endpoint_ids` that matched at least one."""
        return longest_runs(hashes, self._owners, self._slots.mask(endpoint_ids), self._slots)

    def remove(self, endpoint_id: str) -> None:
        """Forget the endpoint: clear its bit from every hash it held and free its slot."""
        bit = self._slots.release(endpoint_id)
        if not bit:
            return
        for h in self._lrus.pop(endpoint_id):
            clear_bit(self._owners, h, bit)
