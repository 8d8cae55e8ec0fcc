"""Memory of the prefix index per entry, measured with tracemalloc.

An entry is one (endpoint, block hash) pair: what `PrefixIndex.record` adds when a request's blocks are recorded
for an endpoint. The index is filled the way traffic fills it: requests of `blocks_per_request` fresh 64-bit
hashes (xxhash64 values in the router), each recorded for `owners` endpoints taken round-robin from `endpoints`,
until `entries` pairs are held, with capacities high enough that nothing is evicted. The hashes are created while
tracing, since the index keeps them alive; the per-request lists are freed before the measurement. Reported:
bytes per entry and per distinct hash. Each hash costs a dict slot in `owners` with its endpoint bitmask (an int
whose size grows with the highest endpoint slot set in it) and one `OrderedDict` node in each owner's LRU.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass

from kvroute.router.plugins.prefix.index import PrefixIndex

SCENARIOS = ((16, 1), (16, 4), (256, 1), (1024, 1), (1024, 4))  # (endpoints, owners of each hash)


@dataclass(frozen=True)
class MemoryRow:
    endpoints: int
    owners: int
    entries: int
    hashes: int
    bytes_total: int

    @property
    def bytes_per_entry(self) -> float:
        return self.bytes_total / self.entries

    @property
    def bytes_per_hash(self) -> float:
        return self.bytes_total / self.hashes


def measure_index(
    entries: int, endpoints: int, owners: int, *, blocks_per_request: int = 64, seed: int = 1
) -> MemoryRow:
    if not 1 <= owners <= endpoints:
        raise ValueError("owners must be between 1 and the number of endpoints")
    rng = random.Random(seed)
    ids = [f"10.0.{i // 256}.{i % 256}:8000" for i in range(endpoints)]
    capacity = entries  # never evict
    requests = max(1, entries // (owners * blocks_per_request))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = PrefixIndex()
        turn = 0
        for _ in range(requests):
            hashes = [rng.getrandbits(64) for _ in range(blocks_per_request)]
            for _ in range(owners):
                index.record(ids[turn % endpoints], hashes, capacity)
                turn += 1
            del hashes
        gc.collect()
        total = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    held = sum(index.hashes_of(endpoint_id) for endpoint_id in ids)
    return MemoryRow(endpoints, owners, held, len(index), total)


def run_memory(entries: int, scenarios: Sequence[tuple[int, int]] = SCENARIOS) -> list[MemoryRow]:
    return [measure_index(entries, endpoints, owners) for endpoints, owners in scenarios]
