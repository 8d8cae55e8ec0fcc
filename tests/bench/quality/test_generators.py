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
    SinusoidPhase,
    WorkloadSpec,
    parse_workload,
)
from kvroute.simulator.des.harness import WorkloadRequest
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


AGENTIC = """\
name: agent
fleet: {engines: 2, profile: llama-3.1-8b-h100}
arrival: [{process: poisson, rate: 1, count: 4}]
generator: {kind: agentic, system_prompts: 2, system_tokens: 100, task_tokens: 50, turns_min: 2, turns_max: 5,
            tool_tokens_min: 30, tool_tokens_max: 60, pause_min_s: 0.2, pause_max_s: 0.4,
            output: {median: 20, sigma: 0.5, min: 10, max: 40}}
"""

RAG = """\
name: rag
fleet: {engines: 2, profile: llama-3.1-8b-h100}
arrival: [{process: poisson, rate: 5, count: 200}]
generator: {kind: rag, tenants: 2, instruction_tokens: 20, documents: 30, document_tokens: 50, zipf: 1.2,
            docs_min: 2, docs_max: 4, question_tokens: 10, output: {median: 30, sigma: 0.8, min: 5, max: 60}}
"""


def test_output_lengths_follow_the_clipped_lognormal(tiny_text: str) -> None:
    text = tiny_text.replace("output_tokens: 6}", "output: {median: 50, sigma: 0.6, min: 20, max: 90}}")
    text = text.replace("count: 60", "count: 2000").replace("profile: tiny", "profile: llama-3.1-8b-h100")
    lengths = sorted(r.max_tokens for r in build(parse_workload(text), 0).requests)
    assert lengths[0] == 20 and lengths[-1] == 90  # clipped at both ends: P(Z < ln(0.4) / 0.6) = 6%
    assert lengths[1000] == pytest.approx(50, abs=3)  # the median
    assert sum(x == 90 for x in lengths) / 2000 == pytest.approx(0.164, abs=0.03)  # P(Z > ln(1.8) / 0.6)


def test_agentic_turns_append_an_answer_and_a_tool_output() -> None:
    requests = build(parse_workload(AGENTIC), 0).requests
    tokenizer = Tokenizer()
    sessions: dict[str, list[WorkloadRequest]] = {}
    for r in sorted(requests, key=lambda r: r.request_id):
        sessions.setdefault(r.request_id.split("-")[0], []).append(r)
        assert r.prompt_token_ids == tokenizer.encode(r.prompt) and 10 <= r.max_tokens <= 40
    assert len(sessions) == 4 and all(2 <= len(turns) <= 5 for turns in sessions.values())
    for turns in sessions.values():
        for previous, current in itertools.pairwise(turns):
            assert current.prompt.startswith(previous.prompt) and "<|tool|>" in current.prompt
            added = (len(current.prompt) - len(previous.prompt)) // 4
            assert previous.max_tokens + 30 <= added <= previous.max_tokens + 60 + 10  # + the chat template
            gap = current.arrival_time - previous.arrival_time
            assert 0.2 + previous.max_tokens * 0.01 <= gap <= 0.4 + previous.max_tokens * 0.01


def test_rag_prompts_are_an_instruction_distinct_documents_and_a_question() -> None:
    requests = build(parse_workload(RAG), 0).requests
    tokenizer = Tokenizer()
    firsts: Counter[str] = Counter()
    for r in requests:
        assert r.prompt_token_ids == tokenizer.encode(r.prompt)
        documents = (len(r.prompt_token_ids) - 20 - 10) // 50
        assert 2 <= documents <= 4 and len(r.prompt_token_ids) == 20 + 50 * documents + 10
        chunks = [r.prompt[80 + 200 * k : 80 + 200 * (k + 1)] for k in range(documents)]
        assert len(set(chunks)) == documents
        firsts[chunks[0]] += 1
    assert len({r.prompt[:80] for r in requests}) == 2
    # Document 0's popularity is 1 / H(30, 1.2) = 28%; it is drawn first at least that often.
    assert firsts.most_common(1)[0][1] / 200 == pytest.approx(0.28, abs=0.08)


def test_a_sinusoid_rises_and_falls() -> None:
    phase = SinusoidPhase(process="sinusoid", mean_rate=100, amplitude=0.8, period_s=20, count=4000)
    times = arrival_times([phase], random.Random(0))
    assert times == sorted(times) and times[-1] == pytest.approx(40, rel=0.05)  # two periods at 100/s
    # Rate 100 x (1 - 0.8 cos(2 pi t / 20)): 20/s at t = 0, 180/s at t = 10; over [0, 5) 100 x (5 - 0.8 x 20 /
    # (2 pi)) = 245 arrivals, over [5, 15) 1000 + 2 x 255 = 1,509.
    assert sum(t < 5 for t in times) == pytest.approx(245, rel=0.15)
    assert sum(5 <= t < 15 for t in times) == pytest.approx(1509, rel=0.08)
