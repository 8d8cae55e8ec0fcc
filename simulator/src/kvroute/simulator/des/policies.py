"""Two baseline routing policies for the harness's own command and tests (the benchmark suite has the rest).

- `round-robin`: engine `n mod N` for the n-th request.
- `least-loaded`: fewest waiting + running requests, lowest index on ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import count

from kvroute.simulator.des.harness import EngineView, RoutingPolicy, WorkloadRequest


def round_robin() -> RoutingPolicy:
    counter = count()

    def route(request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> int:
        return next(counter) % len(engines)

    return route


def least_loaded() -> RoutingPolicy:
    def route(request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> int:
        return min(engines, key=lambda view: (view.num_waiting + view.num_running, view.index)).index

    return route


POLICIES = {"round-robin": round_robin, "least-loaded": least_loaded}
