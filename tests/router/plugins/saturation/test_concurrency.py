from __future__ import annotations

import asyncio

import pydantic
import pytest

from kvroute.router.config.models import FlowControlSpec
from kvroute.router.framework import (
    ApiKind,
    CycleState,
    Endpoint,
    LLMRequest,
    ProfileResult,
    ResponseInfo,
    SchedulingResult,
)
from kvroute.router.plugins.saturation.concurrency import ConcurrencyDetector
from kvroute.router.requestcontrol.flowcontrol.controller import FlowController

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})
A, B, C = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3))


def detector(params: dict[str, object] | None = None) -> ConcurrencyDetector:
    return ConcurrencyDetector("conc", ConcurrencyDetector.Params.model_validate(params or {}))


def send(d: ConcurrencyDetector, target: Endpoint, *fallbacks: Endpoint) -> CycleState:
    state = CycleState()
    d.pre_request(state, REQUEST, SchedulingResult({"default": ProfileResult((target, *fallbacks))}, "default"))
    return state


def complete(d: ConcurrencyDetector, state: CycleState, error: str | None = None) -> None:
    d.on_response_complete(state, REQUEST, None, ResponseInfo(error=error))


def test_saturation_is_in_flight_over_max_concurrency_times_candidates() -> None:
    d = detector({"maxConcurrency": 2})
    for target in (A, A, A, B):
        send(d, target)
    # (3 + 1 + 0) / (2 x 3) = 0.667
    assert d.saturation([A, B, C]) == pytest.approx(4 / 6)
    # (3 + 1) / (2 x 2) = 1.0: saturated, although B has room (the pool's load is aggregated)
    assert d.saturation([A, B]) == pytest.approx(1.0)
    # a request on an endpoint that is not a candidate does not count: 0 / 2
    assert d.saturation([C]) == 0.0


def test_no_candidates_is_saturated() -> None:
    assert detector().saturation([]) == 1.0


def test_default_max_concurrency_is_100() -> None:
    d = detector()
    for _ in range(50):
        send(d, A)
    assert d.saturation([A]) == pytest.approx(0.5)


def test_only_the_primary_target_is_charged_and_completion_releases_once_whatever_the_outcome() -> None:
    d = detector({"maxConcurrency": 1})
    first = send(d, A, B)
    second = send(d, A)
    assert (d.in_flight(A.id), d.in_flight(B.id)) == (2, 0)
    complete(d, first, error="client disconnected")
    complete(d, first)
    assert d.in_flight(A.id) == 1
    complete(d, second)
    assert d.saturation([A]) == 0.0


def test_filter_drops_endpoints_at_max_concurrency_times_one_plus_headroom() -> None:
    d = detector({"maxConcurrency": 2, "headroom": 0.5})  # limit 3
    for target in (A, A, A, B, B):
        send(d, target)
    assert d.filter(CycleState(), REQUEST, [A, B, C]) == [B, C]
    without_headroom = detector({"maxConcurrency": 2})
    for target in (A, A, B):
        send(without_headroom, target)
    assert without_headroom.filter(CycleState(), REQUEST, [A, B, C]) == [B, C]


def test_filter_keeps_everything_rather_than_nothing() -> None:
    d = detector({"maxConcurrency": 1})
    send(d, A)
    send(d, B)
    assert d.filter(CycleState(), REQUEST, [A, B]) == [A, B]


def test_two_detectors_count_apart() -> None:
    one, two = detector(), ConcurrencyDetector("other")
    state = send(one, A)
    complete(two, state)
    assert (one.in_flight(A.id), two.in_flight(A.id)) == (1, 0)


@pytest.mark.parametrize(
    "params",
    [{"maxConcurrency": 0}, {"headroom": -0.1}, {"concurrencyMode": "tokens"}, {"maxTokenConcurrency": 10}],
)
def test_invalid_parameters_are_rejected(params: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        detector(params)


async def test_flow_control_releases_exactly_as_many_as_fit_and_refills_a_freed_slot_at_once() -> None:
    """No polling: the re-check is an hour away, so every release below comes from an event."""
    d = detector({"maxConcurrency": 2})
    flow = FlowController(FlowControlSpec(), lambda: d, lambda: (A,), recheck=3600)
    running: list[CycleState] = []

    async def request() -> None:
        await flow.wait(0, "t", 1)
        running.append(send(d, A))  # scheduled: its PreRequest hooks ran
        flow.settled()

    tasks = [asyncio.create_task(request()) for _ in range(5)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert (len(running), len(flow.queue), d.in_flight(A.id)) == (2, 3, 2)

    complete(d, running[0])  # what a request's end does: response hooks first, then the queue is woken
    flow.wake()
    for _ in range(10):
        await asyncio.sleep(0)
    assert (len(running), len(flow.queue), d.in_flight(A.id)) == (3, 2, 2)

    for state in running[1:]:
        complete(d, state)
    flow.wake()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert (len(running), len(flow.queue), d.in_flight(A.id)) == (5, 0, 2)
