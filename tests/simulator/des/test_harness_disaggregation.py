from __future__ import annotations

from collections.abc import Sequence

from kvroute.simulator.des.harness import (
    EngineView,
    HarnessListener,
    RequestRecord,
    Route,
    WorkloadRequest,
    simulate,
)
from kvroute.simulator.des.workload import shared_prefix
from kvroute.simulator.engine.profiles import PROFILES

H100 = PROFILES["llama-3.1-8b-h100"]


def requests(n: int = 40) -> list[WorkloadRequest]:
    return shared_prefix(
        num_requests=n, groups=2, system_tokens=800, question_tokens=200, output_tokens=10, rate=5, seed=11
    )


def prefill_on_0_decode_on_1(request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> Route:
    return Route(decode=1, prefill=0)


class Stages(HarnessListener):
    def __init__(self) -> None:
        self.prefill_done: dict[str, float] = {}
        self.first_token: dict[str, float] = {}
        self.tokens: dict[str, int] = {}

    def on_prefill_done(self, record: RequestRecord, now: float) -> None:
        assert record.request_id not in self.prefill_done
        self.prefill_done[record.request_id] = now

    def on_tokens(self, record: RequestRecord, new_tokens: int, now: float) -> None:
        self.first_token.setdefault(record.request_id, now)
        self.tokens[record.request_id] = self.tokens.get(record.request_id, 0) + new_tokens


def test_a_route_with_a_prefill_engine_runs_the_request_in_two_stages() -> None:
    listener = Stages()
    result = simulate([H100, H100], requests(), prefill_on_0_decode_on_1, listener=listener)
    assert result.unfinished == 0
    for record in result.records:
        assert (record.engine, record.prefill_engine) == (1, 0)
        assert record.prefill_finish_time is not None and record.first_token_time is not None
        # The client's first token comes from the decode engine, after the prefill stage and the KV transfer
        # (1 ms setup at least).
        assert record.first_token_time >= record.prefill_finish_time + H100.kv_transfer_setup_s
        assert listener.prefill_done[record.request_id] == record.prefill_finish_time
        assert listener.first_token[record.request_id] == record.first_token_time
        # The prefill stage's own token is never delivered: the decode stage's 10 are all the client sees.
        assert listener.tokens[record.request_id] == record.output_tokens == 10
    # The prefill engine computes the shared system prompts once each: its later requests hit its cache.
    hits = [r.prefill_cached_tokens for r in result.records]
    assert hits[-1] >= 800 - H100.block_size


def test_prefill_equal_to_decode_is_not_disaggregated_and_an_int_equals_a_route() -> None:
    as_int = simulate([H100, H100], requests(), lambda r, e, now: 1)
    as_route = simulate([H100, H100], requests(), lambda r, e, now: Route(decode=1, prefill=1))
    rows = [(r.engine, r.prefill_engine, r.first_token_time, r.finish_time) for r in as_int.records]
    assert rows == [(r.engine, r.prefill_engine, r.first_token_time, r.finish_time) for r in as_route.records]
    assert {r.prefill_engine for r in as_int.records} == {None}


def test_disaggregation_takes_prompt_compute_off_the_decode_engine() -> None:
    # Same traffic, decode on engine 1 alone vs prefill moved to engine 0: the decode engine's time per output
    # token improves because it no longer computes prompts between decode steps.
    together = simulate([H100, H100], requests(200), lambda r, e, now: 1)
    apart = simulate([H100, H100], requests(200), prefill_on_0_decode_on_1)

    def mean_tpot(records: Sequence[RequestRecord]) -> float:
        values = [r.tpot for r in records if r.tpot is not None]
        return sum(values) / len(values)

    assert mean_tpot(apart.records) < mean_tpot(together.records)


def test_a_disaggregated_request_ignores_its_cache_hit_threshold() -> None:
    cold = [
        WorkloadRequest(r.request_id, r.arrival_time, r.prompt, r.prompt_token_ids, r.max_tokens, None, 0.99)
        for r in requests(5)
    ]
    whole = simulate([H100, H100], cold, lambda r, e, now: 1)
    staged = simulate([H100, H100], cold, prefill_on_0_decode_on_1)
    assert {r.finish_reason for r in whole.records} == {"cache_threshold"}
    assert {r.finish_reason for r in staged.records} == {"length"}
