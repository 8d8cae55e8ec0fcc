"""`FlowQueue`: the waiting requests, in priority bands of flows, and which one is served next.

Three tiers, as in GIE's flow control:

1. **bands**, strictly by priority: a request of a higher band always goes before any of a lower band;
2. **flows** inside a band (a flow is a tenant: the fairness id): `round-robin-fairness-policy` serves the band's
   non-empty flows in turn, one request each, so a tenant with 100 queued requests and a tenant with 1 alternate;
   `global-strict-fairness-policy` serves the flow whose head arrived first (FCFS across the band);
3. **ordering** inside a flow: `fcfs-ordering-policy`, oldest first.

Limits are checked when a request arrives and never evict a queued one: the band's `maxRequests` / `maxBytes`
(from its `priorityBands` entry, else `defaultPriorityBand`) and the global `maxRequests` / `maxBytes` (0: no
limit). A request over any of them is refused (`CapacityExceeded`); so the queue's memory is bounded by the
limits. An empty flow is dropped at once and an empty band too, so the structure never outgrows what waits in it.
This module keeps no clock and no event loop: `FlowController` drives it.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from kvroute.router.config.models import FlowControlSpec, PriorityBandSpec

T = TypeVar("T")

_sequence = itertools.count()


class CapacityExceeded(Exception):
    """The request does not fit: `limit` names the limit it is over (e.g. "priorityBands[priority=0].maxRequests")."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


@dataclass(eq=False)
class QueueItem(Generic[T]):
    """One waiting request: its band, its flow, its size in bytes and what the controller attached (`payload`)."""

    priority: int
    flow: str
    size: int
    payload: T
    seq: int = field(default_factory=lambda: next(_sequence))
    queued: bool = True


class _Band(Generic[T]):
    __slots__ = ("bytes", "flows", "requests", "spec")

    def __init__(self, spec: PriorityBandSpec) -> None:
        self.spec = spec
        self.flows: OrderedDict[str, deque[QueueItem[T]]] = OrderedDict()  # round-robin order: next flow first
        self.requests = 0
        self.bytes = 0


class FlowQueue(Generic[T]):
    def __init__(self, spec: FlowControlSpec) -> None:
        self.spec = spec
        self._bands: dict[int, _Band[T]] = {}
        self.requests = 0
        self.bytes = 0

    def configure(self, spec: FlowControlSpec) -> None:
        """New limits and policies for later decisions; queued requests stay where they are."""
        self.spec = spec
        for priority, band in self._bands.items():
            band.spec = spec.band(priority)

    def __len__(self) -> int:
        return self.requests

    def band_size(self, priority: int) -> tuple[int, int]:
        """(requests, bytes) queued in the band of `priority`."""
        band = self._bands.get(priority)
        return (band.requests, band.bytes) if band is not None else (0, 0)

    def flow_size(self, priority: int, flow: str) -> int:
        band = self._bands.get(priority)
        queue = band.flows.get(flow) if band is not None else None
        return len(queue) if queue is not None else 0

    def push(self, priority: int, flow: str, size: int, payload: T) -> QueueItem[T]:
        """Queue a request at the back of its flow; raises `CapacityExceeded` (and queues nothing) when it does not
        fit."""
        spec = self.spec
        band = self._bands.get(priority)
        band_spec = band.spec if band is not None else spec.band(priority)
        requests, queued_bytes = (band.requests, band.bytes) if band is not None else (0, 0)
        where = f"priorityBands[priority={priority}]"
        _check(band_spec.max_requests, requests + 1, f"{where}.maxRequests")
        _check(band_spec.max_bytes, queued_bytes + size, f"{where}.maxBytes")
        _check(spec.max_requests, self.requests + 1, "maxRequests")
        _check(spec.max_bytes, self.bytes + size, "maxBytes")
        if band is None:
            band = self._bands[priority] = _Band(band_spec)
        item = QueueItem(priority, flow, size, payload)
        queue = band.flows.get(flow)
        if queue is None:
            queue = band.flows[flow] = deque()
        queue.append(item)
        self._count(band, item, +1)
        return item

    @property
    def priorities(self) -> list[int]:
        """The priorities of the bands holding requests."""
        return list(self._bands)

    def pop(self, admits: Callable[[int], bool] | None = None) -> QueueItem[T] | None:
        """The next request to serve (the highest band `admits`, all by default; its next flow by the band's
        fairness policy; that flow's oldest), removed from the queue; None when nothing waits (or may go)."""
        priority = max((p for p in self._bands if admits is None or admits(p)), default=None)
        if priority is None:
            return None
        band = self._bands[priority]
        if band.spec.fairness_policy_ref == "global-strict-fairness-policy":
            flow = min(band.flows, key=lambda name: band.flows[name][0].seq)
        else:
            flow = next(iter(band.flows))
        queue = band.flows[flow]
        item = queue.popleft()
        if queue:
            band.flows.move_to_end(flow)  # its turn is over: to the back of the round
        else:
            del band.flows[flow]
        self._count(band, item, -1)
        return item

    def remove(self, item: QueueItem[T]) -> bool:
        """Take `item` out (its TTL expired, its client went away); False when it is no longer queued."""
        if not item.queued:
            return False
        band = self._bands[item.priority]
        queue = band.flows[item.flow]
        queue.remove(item)
        if not queue:
            del band.flows[item.flow]
        self._count(band, item, -1)
        return True

    def each(self, visit: Callable[[QueueItem[T]], None]) -> None:
        for band in self._bands.values():
            for queue in band.flows.values():
                for item in queue:
                    visit(item)

    def _count(self, band: _Band[T], item: QueueItem[T], sign: int) -> None:
        item.queued = sign > 0
        band.requests += sign
        band.bytes += sign * item.size
        self.requests += sign
        self.bytes += sign * item.size
        if not band.requests:
            del self._bands[item.priority]


def _check(limit: int, wanted: int, name: str) -> None:
    if limit and wanted > limit:
        raise CapacityExceeded(name)
