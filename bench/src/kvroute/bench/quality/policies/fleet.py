"""A fleet of router replicas in front of one pool: `N` instances of a policy, each seeing 1/N of the traffic.

In Kubernetes several replicas of a router (an Endpoint Picker behind a gateway, or a proxy behind a Service)
share the pool's engines but not their memory. The gateway spreads requests over the replicas without looking
at them: here round-robin by arrival, so replica `k` routes requests `k, k + N, k + 2N, ...` and hears only
their tokens and completions. What a replica knows of the others comes from what every replica sees for itself
(the engines' scraped metrics and, for policies that read them, the engines' caches) and, with `sync`, from
kvroute's fleet sync (`kvroute.router.fleet.sync`): the same `FleetSync` objects as in the router exchange
their batches here on a simulated transport. The router's transport sends what a replica recorded as soon as
its event loop is free, so here a replica's records leave at once and reach the peers `SYNC_LATENCY_S` later
(a ZMQ message between two hosts of one cluster); a peer applies them at its first event at or after that
time. The delay matters: with the records held back for up to 5 ms (a batching transport), 4 replicas lost 15%
TTFT p90 on multi-lora (mean of 4 seeds) where 0.2 ms lost 3%.

Each replica is built by the policy's own factory with its own seed (`replica_seed`), so `N = 1` without sync
is exactly the policy alone.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

from kvroute.bench.quality.adapter import SchedulerPolicy
from kvroute.bench.quality.policies.base import Policy
from kvroute.router.fleet.sync import FleetSync
from kvroute.simulator.des.harness import EngineView, RequestRecord, Route, WorkloadRequest
from kvroute.simulator.engine.kv_events import KVEvent

SYNC_LATENCY_S = 0.0002


def replica_seed(seed: int, replica: int) -> int:
    return seed * 1009 + replica


class RouterFleet(Policy):
    def __init__(self, replicas: int, make: Callable[[int], Policy], *, sync: bool = False) -> None:
        if replicas < 1:
            raise ValueError("a fleet has at least one replica")
        self.replicas = [make(k) for k in range(replicas)]
        intervals = {r.tick_interval for r in self.replicas}
        if len(intervals) != 1:
            raise ValueError("the replicas of a fleet must scrape at the same interval")
        self.tick_interval = intervals.pop()
        self.needs_kv_events = any(r.needs_kv_events for r in self.replicas)
        self._syncs: list[FleetSync] = []
        if sync:
            for k, replica in enumerate(self.replicas):
                if not isinstance(replica, SchedulerPolicy):
                    raise ValueError("fleet sync needs a policy that runs on kvroute's scheduler")
                self._syncs.append(replica.join_fleet(f"replica-{k}"))
        self._in_transit: list[tuple[float, int, int, bytes]] = []  # (arrival, order, sender, batch)
        self._sent = 0
        self._owner: dict[str, Policy] = {}
        self._next = 0

    def route(self, request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> int | Route:
        self._deliver(now)
        replica = self.replicas[self._next]
        self._next = (self._next + 1) % len(self.replicas)
        self._owner[request.request_id] = replica
        answer = replica.route(request, engines, now)
        self._flush(now)
        return answer

    def on_tick(self, engines: Sequence[EngineView], now: float) -> None:
        self._deliver(now)
        for replica in self.replicas:
            replica.on_tick(engines, now)

    def on_kv_events(self, engine: int, events: Sequence[KVEvent], now: float) -> None:
        for replica in self.replicas:  # every replica subscribes to every engine
            replica.on_kv_events(engine, events, now)

    def on_tokens(self, record: RequestRecord, new_tokens: int, now: float) -> None:
        self._owner[record.request_id].on_tokens(record, new_tokens, now)
        self._flush(now)

    def on_prefill_done(self, record: RequestRecord, now: float) -> None:
        self._owner[record.request_id].on_prefill_done(record, now)
        self._flush(now)

    def on_finish(self, record: RequestRecord, now: float) -> None:
        self._owner.pop(record.request_id).on_finish(record, now)
        self._flush(now)

    def _flush(self, now: float) -> None:
        """Put what the replicas recorded at `now` on the wire."""
        for sender, sync in enumerate(self._syncs):
            batch = sync.take_batch(now)
            if batch is not None:
                heapq.heappush(self._in_transit, (now + SYNC_LATENCY_S, self._sent, sender, batch))
                self._sent += 1

    def _deliver(self, now: float) -> None:
        transit = self._in_transit
        while transit and transit[0][0] <= now:
            arrival, _, sender, batch = heapq.heappop(transit)
            for receiver, sync in enumerate(self._syncs):
                if receiver != sender:
                    sync.receive(batch, arrival)
