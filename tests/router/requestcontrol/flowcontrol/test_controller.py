from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from kvroute.router.config.models import FlowControlSpec
from kvroute.router.framework import Endpoint, SaturationDetector
from kvroute.router.requestcontrol.flowcontrol.controller import FlowController, FlowRejected
from kvroute.router.requestcontrol.flowcontrol.metrics import FlowControlMetrics


class Slots(SaturationDetector):
    """Saturated while `busy >= capacity`: the router's own in-flight count, as a concurrency detector has it."""

    type_name = "test-slots"

    def __init__(self, capacity: int) -> None:
        super().__init__("slots", None)
        self.capacity = capacity
        self.busy = 0

    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        return self.busy / self.capacity


def controller(detector: Slots, registry: CollectorRegistry | None = None, **fields: object) -> FlowController:
    metrics = FlowControlMetrics(registry) if registry is not None else None
    return FlowController(FlowControlSpec.model_validate(fields), lambda: detector, lambda: (), metrics, recheck=0.005)


async def run(flow: FlowController, detector: Slots, served: list[str], priority: int, tenant: str, name: str) -> None:
    await flow.wait(priority, tenant, 10)
    detector.busy += 1  # scheduled: the detector counts it
    served.append(name)
    flow.settled()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_requests_wait_while_saturated_and_go_as_completions_free_room() -> None:
    detector = Slots(capacity=1)
    flow = controller(detector)
    served: list[str] = []
    tasks = [asyncio.create_task(run(flow, detector, served, 0, "t", f"r{i}")) for i in range(3)]
    await settle()
    assert served == ["r0"]
    assert len(flow.queue) == 2
    detector.busy -= 1  # r0 completes
    flow.wake()
    await settle()
    assert served == ["r0", "r1"]
    detector.busy -= 1
    flow.wake()
    await asyncio.gather(*tasks)
    assert served == ["r0", "r1", "r2"]


async def test_the_critical_band_and_every_flow_get_their_turn() -> None:
    detector = Slots(capacity=1)
    detector.busy = 1  # the pool is full when they arrive
    flow = controller(detector)
    served: list[str] = []
    arrivals = [(0, "greedy", f"greedy-{i}") for i in range(3)] + [(0, "polite", "polite"), (10, "vip", "critical")]
    tasks = []
    for priority, tenant, name in arrivals:
        tasks.append(asyncio.create_task(run(flow, detector, served, priority, tenant, name)))
        await settle()
    for _ in arrivals:
        detector.busy -= 1
        flow.wake()
        await settle()
    await asyncio.gather(*tasks)
    assert served == ["critical", "greedy-0", "polite", "greedy-1", "greedy-2"]


async def test_over_capacity_is_429_and_ttl_expiry_is_503() -> None:
    detector = Slots(capacity=1)
    detector.busy = 1
    registry = CollectorRegistry()
    flow = controller(detector, registry, maxRequests=1, defaultRequestTTL="50ms")
    waiting = asyncio.create_task(flow.wait(0, "t", 10))
    await settle()
    with pytest.raises(FlowRejected) as full:
        await flow.wait(0, "t", 10)
    assert (full.value.status, full.value.reason) == (429, "capacity")
    with pytest.raises(FlowRejected) as expired:
        await waiting
    assert (expired.value.status, expired.value.reason) == (503, "ttl_expired")
    assert len(flow.queue) == 0
    sample = registry.get_sample_value
    assert sample("kvroute_flow_control_rejected_total", {"priority": "0", "reason": "capacity"}) == 1
    assert sample("kvroute_flow_control_rejected_total", {"priority": "0", "reason": "ttl_expired"}) == 1
    assert sample("kvroute_flow_control_queue_size", {"priority": "0", "flow": "t"}) == 0


async def test_a_client_that_goes_away_leaves_the_queue() -> None:
    detector = Slots(capacity=1)
    detector.busy = 1
    registry = CollectorRegistry()
    flow = controller(detector, registry)
    waiting = asyncio.create_task(flow.wait(0, "t", 10))
    await settle()
    assert (len(flow.queue), flow.queue.bytes) == (1, 10)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (len(flow.queue), flow.queue.bytes) == (0, 0)
    sample = registry.get_sample_value
    assert sample("kvroute_flow_control_rejected_total", {"priority": "0", "reason": "disconnected"}) == 1
    detector.busy = 0
    await asyncio.wait_for(flow.wait(0, "t", 10), 1.0)  # nothing stale holds the next one back


async def test_the_flow_label_is_bounded() -> None:
    registry = CollectorRegistry()
    metrics = FlowControlMetrics(registry, max_flow_labels=2)
    assert [metrics.flow_label(f) for f in ("a", "b", "c", "a")] == ["a", "b", "other", "a"]
