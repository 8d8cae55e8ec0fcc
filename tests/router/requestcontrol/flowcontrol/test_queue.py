from __future__ import annotations

import pytest

from kvroute.router.config.models import FlowControlSpec
from kvroute.router.requestcontrol.flowcontrol.queue import CapacityExceeded, FlowQueue


def spec(**fields: object) -> FlowControlSpec:
    return FlowControlSpec.model_validate(fields)


def drain(queue: FlowQueue[str]) -> list[str]:
    order = []
    while (item := queue.pop()) is not None:
        order.append(item.payload)
    return order


def test_bands_are_strict_by_priority() -> None:
    queue: FlowQueue[str] = FlowQueue(spec())
    queue.push(0, "a", 1, "standard-1")
    queue.push(-1, "a", 1, "sheddable")
    queue.push(10, "a", 1, "critical")
    queue.push(0, "a", 1, "standard-2")
    assert drain(queue) == ["critical", "standard-1", "standard-2", "sheddable"]


def test_round_robin_across_flows_and_fcfs_inside_a_flow() -> None:
    queue: FlowQueue[str] = FlowQueue(spec())
    for i in range(4):
        queue.push(0, "greedy", 1, f"greedy-{i}")
    queue.push(0, "polite", 1, "polite-0")
    queue.push(0, "other", 1, "other-0")
    assert drain(queue) == ["greedy-0", "polite-0", "other-0", "greedy-1", "greedy-2", "greedy-3"]


def test_global_strict_fairness_serves_the_oldest_head_first() -> None:
    queue: FlowQueue[str] = FlowQueue(spec(defaultPriorityBand={"fairnessPolicyRef": "global-strict-fairness-policy"}))
    for name in ("g0", "g1", "g2"):
        queue.push(0, "greedy", 1, name)
    queue.push(0, "polite", 1, "p0")
    assert drain(queue) == ["g0", "g1", "g2", "p0"]


@pytest.mark.parametrize(
    ("limits", "sizes", "limit"),
    [
        ({"maxRequests": 2}, [1, 1, 1], "maxRequests"),
        ({"maxBytes": 10}, [6, 4, 1], "maxBytes"),
        ({"priorityBands": [{"priority": 0, "maxRequests": 2}]}, [1, 1, 1], "priorityBands[priority=0].maxRequests"),
        ({"defaultPriorityBand": {"maxBytes": "10"}}, [9, 1, 1], "priorityBands[priority=0].maxBytes"),
    ],
)
def test_a_request_over_a_limit_is_refused_and_nothing_is_queued(
    limits: dict[str, object], sizes: list[int], limit: str
) -> None:
    queue: FlowQueue[str] = FlowQueue(spec(**limits))
    for size in sizes[:-1]:
        queue.push(0, "a", size, "fits")
    with pytest.raises(CapacityExceeded) as info:
        queue.push(0, "b", sizes[-1], "refused")
    assert info.value.limit == limit
    assert (len(queue), queue.bytes) == (len(sizes) - 1, sum(sizes[:-1]))


def test_band_limits_are_per_band() -> None:
    queue: FlowQueue[str] = FlowQueue(spec(defaultPriorityBand={"maxRequests": 1}))
    queue.push(0, "a", 1, "standard")
    queue.push(5, "a", 1, "high")
    with pytest.raises(CapacityExceeded):
        queue.push(0, "a", 1, "standard-2")


def test_removal_leaves_no_trace() -> None:
    queue: FlowQueue[str] = FlowQueue(spec())
    first = queue.push(0, "a", 3, "first")
    queue.push(0, "b", 4, "second")
    assert queue.remove(first)
    assert not queue.remove(first)
    assert (len(queue), queue.bytes, queue.band_size(0), queue.flow_size(0, "a")) == (1, 4, (1, 4), 0)
    assert drain(queue) == ["second"]
    assert (len(queue), queue.bytes, queue.band_size(0)) == (0, 0, (0, 0))
