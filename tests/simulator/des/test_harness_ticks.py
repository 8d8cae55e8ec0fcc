from __future__ import annotations

from collections.abc import Sequence

import pytest

from kvroute.simulator.des.harness import EngineView, HarnessListener, RequestRecord, WorkloadRequest, simulate
from kvroute.simulator.des.policies import round_robin
from kvroute.simulator.des.workload import shared_prefix
from kvroute.simulator.engine.profiles import PROFILES

H100 = PROFILES["llama-3.1-8b-h100"]


def requests(n: int = 30) -> list[WorkloadRequest]:
    return shared_prefix(num_requests=n, groups=3, system_tokens=300, question_tokens=30, output_tokens=5, rate=20)


class Scraper(HarnessListener):
    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.waiting_seen: list[int] = []
        self.events: list[tuple[str, float]] = []

    def on_tick(self, engines: Sequence[EngineView], now: float) -> None:
        self.ticks.append(now)
        self.waiting_seen.append(sum(v.num_waiting + v.num_running for v in engines))
        self.events.append(("tick", now))

    def on_finish(self, record: RequestRecord, now: float) -> None:
        self.events.append(("finish", now))


def test_ticks_run_at_zero_and_every_interval_until_the_work_is_done() -> None:
    scraper = Scraper()
    result = simulate([H100, H100], requests(), round_robin(), listener=scraper, tick_interval=0.05)
    assert scraper.ticks[0] == 0.0
    gaps = {round(b - a, 9) for a, b in zip(scraper.ticks, scraper.ticks[1:], strict=False)}
    assert gaps == {0.05}
    # Ticks stop once nothing else is scheduled: the last one falls within one interval of the end.
    assert result.duration - 0.05 <= scraper.ticks[-1] <= result.duration + 0.05
    assert any(seen > 0 for seen in scraper.waiting_seen)


def test_ticks_change_neither_results_nor_duration() -> None:
    plain = simulate([H100, H100], requests(), round_robin())
    ticked = simulate([H100, H100], requests(), round_robin(), listener=Scraper(), tick_interval=0.01)
    rows = [(r.engine, r.first_token_time, r.finish_time) for r in plain.records]
    assert rows == [(r.engine, r.first_token_time, r.finish_time) for r in ticked.records]
    assert plain.duration == ticked.duration


def test_the_first_tick_precedes_a_request_arriving_at_time_zero() -> None:
    at_zero = [WorkloadRequest("r0", 0.0, "abcd" * 10, list(range(10)), 2)]
    seen: list[str] = []

    class Order(HarnessListener):
        def on_tick(self, engines: Sequence[EngineView], now: float) -> None:
            seen.append("tick")

    def policy(request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> int:
        seen.append("route")
        return 0

    simulate([H100], at_zero, policy, listener=Order(), tick_interval=1.0)
    assert seen[:2] == ["tick", "route"]


def test_a_non_positive_tick_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="tick_interval"):
        simulate([H100], requests(1), round_robin(), tick_interval=0)
