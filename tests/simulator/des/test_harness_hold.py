"""A router that queues: requests held (`HOLD`), dispatched or rejected later, refused at once (`Refuse`)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence

import pytest

from kvroute.simulator.des.harness import (
    HOLD,
    Answer,
    EngineView,
    HarnessControl,
    HarnessListener,
    Refuse,
    RequestRecord,
    WorkloadRequest,
    simulate,
)
from kvroute.simulator.des.workload import shared_prefix
from kvroute.simulator.engine.profiles import PROFILES

H100 = PROFILES["llama-3.1-8b-h100"]


def requests(n: int) -> list[WorkloadRequest]:
    return shared_prefix(num_requests=n, groups=1, system_tokens=64, question_tokens=16, output_tokens=8, rate=100)


class OneAtATime(HarnessListener):
    """Holds every request while one runs; refuses every third; releases the next when one finishes."""

    def __init__(self) -> None:
        self.control: HarnessControl | None = None
        self.waiting: list[str] = []
        self.running = False

    def on_start(self, control: HarnessControl) -> None:
        self.control = control

    def route(self, request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> Answer:
        if int(request.request_id.rsplit("-", 1)[-1]) % 3 == 2:
            return Refuse(429)
        if not self.running:
            self.running = True
            return 0
        self.waiting.append(request.request_id)
        return HOLD

    def on_finish(self, record: RequestRecord, now: float) -> None:
        assert self.control is not None
        self.running = False
        if self.waiting:
            self.running = True
            request_id = self.waiting.pop(0)
            self.control.call_soon(lambda: self.control.dispatch(request_id, 0) if self.control else None)


def test_held_requests_run_one_after_another_and_refusals_end_at_once() -> None:
    policy = OneAtATime()
    result = simulate([H100], requests(9), policy.route, listener=policy, tick_interval=0.05)
    refused = [r for r in result.records if r.status is not None]
    served = [r for r in result.records if r.status is None]
    assert [r.status for r in refused] == [429] * 3
    assert all(r.finish_time == r.arrival_time and r.finish_reason == "rejected" for r in refused)
    assert all(r.first_token_time is None and r.dispatch_time is None and r.engine == -1 for r in refused)
    assert len(served) == 6 and all(r.finish_reason == "length" for r in served)
    ordered = sorted(served, key=lambda r: r.dispatch_time or 0.0)
    for before, after in itertools.pairwise(ordered):
        assert after.dispatch_time == before.finish_time  # released the instant the previous one ended
    assert any(r.dispatch_time is not None and r.dispatch_time > r.arrival_time for r in served)
    assert all(r.ttft is not None and r.ttft >= (r.dispatch_time or 0.0) - r.arrival_time for r in served)


class NeverReleases(HarnessListener):
    def route(self, request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> Answer:
        return HOLD


def test_a_policy_that_never_releases_its_requests_is_an_error() -> None:
    policy = NeverReleases()
    with pytest.raises(RuntimeError, match="never dispatched nor rejected 2 held request"):
        simulate([H100], requests(2), policy.route, listener=policy, tick_interval=0.05, idle_hold_limit=1.0)


class Rejects(HarnessListener):
    def __init__(self) -> None:
        self.control: HarnessControl | None = None

    def on_start(self, control: HarnessControl) -> None:
        self.control = control

    def route(self, request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> Answer:
        return HOLD

    def on_tick(self, engines: Sequence[EngineView], now: float) -> None:
        assert self.control is not None
        for request_id in ("r-0", "r-1"):
            with contextlib.suppress(ValueError):  # already rejected at an earlier tick
                self.control.reject(request_id, 503)


def test_held_requests_can_be_rejected_later_and_only_once() -> None:
    policy = Rejects()
    reqs = [WorkloadRequest(f"r-{i}", 0.01 * i, "x", [1, 2, 3], 4) for i in range(2)]
    result = simulate([H100], reqs, policy.route, listener=policy, tick_interval=0.05)
    assert [(r.status, r.finish_time) for r in result.records] == [(503, 0.05), (503, 0.05)]
    assert policy.control is not None
    with pytest.raises(ValueError, match="is not held"):
        policy.control.reject("r-0", 503)
