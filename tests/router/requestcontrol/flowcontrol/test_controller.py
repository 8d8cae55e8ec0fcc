from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from kvroute.router.config.models import FlowControlSpec
from kvroute.router.framework import Endpoint, SaturationDetector
from kvroute.router.plugins.flowcontrol.usage_limits import PriorityHoldbackPolicy
from kvroute.router.requestcontrol.flowcontrol.controller import FlowController, FlowRejected
from kvroute.router.requestcontrol.flowcontrol.limits import BandLimits
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


async def test_a_holdback_keeps_room_for_the_higher_band() -> None:
    params = PriorityHoldbackPolicy.Params.model_validate({"strategy": "stepwise-spread", "minCeiling": 0.5})
    limits = BandLimits(PriorityHoldbackPolicy("holdback", params), frozenset({100, -1}))
    detector = Slots(capacity=4)
    flow = FlowController(FlowControlSpec(), lambda: detector, lambda: (), recheck=3600, limits=lambda: limits)
    served: list[str] = []
    batch = [asyncio.create_task(run(flow, detector, served, -1, "batch", f"b{i}")) for i in range(4)]
    await settle()
    assert served == ["b0", "b1"]  # the low band stops at half the pool: its ceiling is 0.5
    critical = [asyncio.create_task(run(flow, detector, served, 100, "chat", f"c{i}")) for i in range(2)]
    await settle()
    assert served == ["b0", "b1", "c0", "c1"]  # the critical band fills the rest at once
    detector.busy = 1  # three complete: saturation 0.25, below the low band's ceiling again
    flow.wake()
    await settle()
    assert served == ["b0", "b1", "c0", "c1", "b2"]
    detector.busy = 0
    flow.wake()
    await asyncio.gather(*batch, *critical)
    assert served[-1] == "b3"


def test_band_limits_take_the_configured_and_the_queued_priorities() -> None:
    params = PriorityHoldbackPolicy.Params.model_validate({"strategy": "stepwise-spread", "minCeiling": 0.4})
    limits = BandLimits(PriorityHoldbackPolicy("holdback", params), frozenset({100}))
    gate = limits.gate(0.5, [-1])
    assert gate.ceilings == {100: 1.0, -1: 0.4}
    assert gate.admits(100) and not gate.admits(-1)
    assert BandLimits().gate(0.99, [3]).admits(3) and not BandLimits().gate(1.0, [3]).admits(3)


async def test_a_waiter_cancelled_just_before_a_dispatch_pass_does_not_stall_the_queue() -> None:
    detector = Slots(capacity=1)
    detector.busy = 1
    flow = controller(detector)
    served: list[str] = []
    gone = asyncio.create_task(run(flow, detector, served, 0, "t", "gone"))
    kept = asyncio.create_task(run(flow, detector, served, 0, "t", "kept"))
    await settle()
    assert len(flow.queue) == 2
    gone.cancel()  # its future is cancelled now; its task has not run its handler yet
    detector.busy = 0
    flow._dispatch()  # a pass that was already due runs first
    await asyncio.wait_for(kept, 1.0)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert served == ["kept"]
    assert len(flow.queue) == 0
    later = asyncio.create_task(run(flow, detector, served, 0, "t", "later"))
    detector.busy = 0
    await asyncio.wait_for(later, 1.0)  # nothing leaked: the next request goes too
    assert served == ["kept", "later"]
