from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from kvroute.bench.quality.generators import arrival_times, build
from kvroute.bench.quality.workloads import (
    ArrivalPhase,
    BurstPhase,
    PoissonPhase,
    RampPhase,
    WorkloadSpec,
    parse_workload,
)
from kvroute.simulator.tokenizer import Tokenizer

MULTI_TURN = """\
name: chat
fleet: {engines: 2, profile: tiny}
arrival: [{process: poisson, rate: 2, count: 3}]
generator: {kind: multi-turn, system_prompts: 2, system_tokens: 40, turns: 4, user_tokens: 10, answer_tokens: 8,
            think_time_s: 1}
"""

VARIED = """\
name: varied
fleet: {engines: 2, profile: tiny}
arrival: [{process: poisson, rate: 5, count: 50}]
generator: {kind: varied, groups: 3, isl_mean: 400, isl_spread: 100, isl_min: 250, isl_max: 600, osl_min: 4,
            osl_max: 9}
"""

LORA = """\
name: lora
fleet: {engines: 2, profile: tiny}
arrival: [{process: poisson, rate: 50, count: 3000}]
generator: {kind: shared-prefix, groups: 2, system_tokens: 16, question_tokens: 1, output_tokens: 1,
            lora: {adapters: 4, zipf: 1.0}}
"""


def test_the_same_seed_gives_the_same_requests_and_another_seed_does_not(tiny_spec: WorkloadSpec) -> None:
    first, again, other = build(tiny_spec, 0), build(tiny_spec, 0), build(tiny_spec, 1)
    assert first.requests == again.requests
    assert first.requests != other.requests
    assert [r.arrival_time for r in first.requests] == sorted(r.arrival_time for r in first.requests)


@pytest.mark.parametrize("text", [MULTI_TURN, VARIED, LORA])
def test_token_ids_are_the_tokenized_prompt(text: str) -> None:
    tokenizer = Tokenizer()
    for request in build(parse_workload(text), 0).requests[:200]:
        assert request.prompt_token_ids == tokenizer.encode(request.prompt)


def test_shared_prefix_requests_start_with_one_of_the_groups_system_prompts(tiny_spec: WorkloadSpec) -> None:
    requests = build(tiny_spec, 0).requests
    prefixes = Counter(r.prompt[: 160 * 4] for r in requests)
    assert len(prefixes) == 4  # groups
    assert all(len(r.prompt_token_ids) == 176 and r.max_tokens == 6 for r in requests)


def test_users_per_group_make_whole_prompts_repeat(tiny_text: str) -> None:
    spec = parse_workload(tiny_text.replace("output_tokens: 6}", "output_tokens: 6, users_per_group: 2}"))
    prompts = {r.prompt for r in build(spec, 0).requests}
    assert len(prompts) <= 4 * 2


def test_multi_turn_prompts_grow_and_extend_the_previous_turn() -> None:
    requests = build(parse_workload(MULTI_TURN), 0).requests
    sessions: dict[str, list[str]] = {}
    for r in sorted(requests, key=lambda r: r.request_id):
        sessions.setdefault(r.request_id.split("-")[0], []).append(r.prompt)
    assert len(sessions) == 3 and all(len(turns) == 4 for turns in sessions.values())
    for turns in sessions.values():
        for previous, current in itertools.pairwise(turns):
            assert current.startswith(previous)  # the earlier turn, then its answer and the next question
            assert len(current) - len(previous) > (8 + 10) * 4
    arrivals = {r.request_id: r.arrival_time for r in requests}
    assert arrivals["s00000-t01"] > arrivals["s00000-t00"] + 8 * 0.01


def test_varied_lengths_stay_in_bounds_and_share_half_prefixes() -> None:
    requests = build(parse_workload(VARIED), 0).requests
    assert all(250 <= len(r.prompt_token_ids) <= 600 and 4 <= r.max_tokens <= 9 for r in requests)
    assert len({r.prompt[: 200 * 4] for r in requests}) == 3
    assert len({len(r.prompt_token_ids) for r in requests}) > 10


def test_lora_adapters_follow_a_zipf_popularity() -> None:
    counts = Counter(r.lora_name for r in build(parse_workload(LORA), 0).requests)
    assert set(counts) == {"adapter-0", "adapter-1", "adapter-2", "adapter-3"}
    # Popularity 1 : 1/2 : 1/3 : 1/4 of 25/12 -> 48%, 24%, 16%, 12%
    assert counts["adapter-0"] / 3000 == pytest.approx(0.48, abs=0.03)
    assert counts["adapter-3"] / 3000 == pytest.approx(0.12, abs=0.03)


def test_arrival_phases_follow_each_other() -> None:
    phases: list[ArrivalPhase] = [
        PoissonPhase(process="poisson", rate=100, count=100),
        BurstPhase(process="burst", count=50, after_s=1.0),
        RampPhase(process="ramp", start_rate=10, end_rate=30, count=400),
    ]
    times = arrival_times(phases, random.Random(0))
    assert len(times) == 550 and times == sorted(times)
    burst = times[100:150]
    assert len(set(burst)) == 1 and burst[0] == pytest.approx(times[99] + 1.0)
    ramp = times[150:]
    # 400 arrivals at a rate rising from 10 to 30 per second take about 2 * 400 / (10 + 30) = 20 s, and the
    # second half of the ramp is denser than the first.
    assert ramp[-1] - burst[0] == pytest.approx(20, rel=0.15)
    middle = burst[0] + 10
    assert sum(t > middle for t in ramp) > sum(t <= middle for t in ramp)


def test_a_spread_burst_is_uniform_within_its_window() -> None:
    times = arrival_times([BurstPhase(process="burst", count=1000, spread_s=2.0)], random.Random(0))
    assert times[0] >= 0 and times[-1] <= 2.0
    assert sum(t < 1.0 for t in times) == pytest.approx(500, abs=60)
