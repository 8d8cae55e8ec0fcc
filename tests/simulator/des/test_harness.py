from __future__ import annotations

from collections.abc import Sequence

import pytest

from kvroute.simulator.des.harness import EngineView, HarnessListener, RequestRecord, WorkloadRequest, simulate
from kvroute.simulator.des.policies import least_loaded, round_robin
from kvroute.simulator.des.workload import shared_prefix
from kvroute.simulator.engine.profiles import PROFILES

H100 = PROFILES["llama-3.1-8b-h100"]


def workload(seed: int) -> list[WorkloadRequest]:
    return shared_prefix(
        num_requests=300, groups=6, system_tokens=500, question_tokens=40, output_tokens=20, rate=30, seed=seed
    )


def as_rows(records: Sequence[RequestRecord]) -> list[tuple[object, ...]]:
    return [
        (r.request_id, r.engine, r.first_token_time, r.finish_time, r.cached_tokens, r.output_tokens) for r in records
    ]


def test_same_seed_gives_identical_results_and_another_seed_does_not() -> None:
    first = simulate([H100] * 4, workload(7), least_loaded())
    again = simulate([H100] * 4, workload(7), least_loaded())
    other = simulate([H100] * 4, workload(8), least_loaded())
    assert as_rows(first.records) == as_rows(again.records)
    assert as_rows(first.records) != as_rows(other.records)
    assert first.unfinished == 0 and len(first.records) == 300


def test_records_hold_latencies_and_the_chosen_engine() -> None:
    result = simulate([H100] * 3, workload(1), round_robin())
    assert [r.engine for r in result.records[:6]] == [0, 1, 2, 0, 1, 2]
    for record in result.records:
        assert record.ttft is not None and record.ttft > 0
        assert record.e2e is not None and record.e2e > record.ttft
        assert record.tpot is not None and record.tpot > 0
        assert record.output_tokens == 20 and record.finish_reason == "length"
    # 6 groups over 3 engines: after warm-up nearly every system prompt is a cache hit
    hit = sum(r.cached_tokens for r in result.records) / sum(r.prompt_tokens for r in result.records)
    assert hit > 0.8


def test_sticky_policy_gets_more_cache_hits_than_spreading() -> None:
    requests = workload(3)
    groups = {prefix: n for n, prefix in enumerate(dict.fromkeys(r.prompt[:64] for r in requests))}

    def by_group(request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> int:
        return groups[request.prompt[:64]] % len(engines)

    sticky = simulate([H100] * 3, requests, by_group)
    spread = simulate([H100] * 3, requests, round_robin())

    def cached(result_records: Sequence[RequestRecord]) -> int:
        return sum(r.cached_tokens for r in result_records)

    assert cached(sticky.records) > cached(spread.records)


def test_listener_sees_every_token_and_one_finish_per_request() -> None:
    class Counter(HarnessListener):
        def __init__(self) -> None:
            self.tokens: dict[str, int] = {}
            self.finished: list[str] = []

        def on_tokens(self, record: RequestRecord, new_tokens: int, now: float) -> None:
            self.tokens[record.request_id] = self.tokens.get(record.request_id, 0) + new_tokens

        def on_finish(self, record: RequestRecord, now: float) -> None:
            self.finished.append(record.request_id)

    counter = Counter()
    requests = workload(2)
    simulate([H100] * 2, requests, least_loaded(), listener=counter)
    assert sorted(counter.finished) == sorted(r.request_id for r in requests)
    assert set(counter.tokens.values()) == {20}


def test_global_cache_hit_threshold_finishes_cold_requests_at_once() -> None:
    requests = workload(4)[:5]
    result = simulate([H100], requests, round_robin(), global_cache_hit_threshold=0.99)
    assert {r.finish_reason for r in result.records} == {"cache_threshold"}
    assert all(r.output_tokens == 0 and r.finish_time == r.arrival_time for r in result.records)


def test_workload_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        shared_prefix(num_requests=1, groups=1, system_tokens=1, question_tokens=1, output_tokens=1, rate=0)
