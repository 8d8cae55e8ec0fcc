from __future__ import annotations

import random
from pathlib import Path

import pytest

from kvroute.bench.quality.families import (
    FAMILIES_DIR,
    Mix,
    calibrated_rate,
    draw,
    headroom,
    load_family,
    mean_output,
    mix,
    resolve_families,
    sample,
)
from kvroute.bench.quality.generators import build
from kvroute.bench.quality.workloads import (
    AgenticSpec,
    Fleet,
    OutputLength,
    RagSpec,
    SharedPrefixSpec,
    SinusoidPhase,
    WorkloadError,
)
from kvroute.simulator.engine.profiles import PROFILES

FAMILIES = (
    "agentic",
    "bursty",
    "diurnal",
    "lora-mix",
    "multi-turn",
    "pd",
    "rag",
    "shared-prefix",
    "skewed-tenants",
    "tiny-groups",
)

TINY_FAMILY = """\
name: tiny-family
description: a small family for tests
utilisation: [0.5, 0.8]
fleet:
  engines: [2, 3]
  profiles: [tiny]
  kv_coverage: [1.2, 2.0]
  slow: {probability: 0.5, engines: [1, 1], factor: [1.5, 2.0]}
arrival:
  - {process: poisson, rate: 1.0, count: [30, 40]}
generator:
  kind: shared-prefix
  groups: [2, 4]
  system_tokens: [100, 160]
  question_tokens: [8, 16]
  output: {median: [4, 8], sigma: [0.2, 0.5], min: 2, max: 16}
"""


@pytest.fixture
def tiny_family_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-family.yaml"
    path.write_text(TINY_FAMILY)
    return path


def test_all_families_load_by_name() -> None:
    assert tuple(f.name for f in resolve_families("all")) == FAMILIES
    assert FAMILIES_DIR.name == "families" and FAMILIES_DIR.parent.name == "bench"


def test_the_same_seed_gives_the_same_workloads_and_other_seeds_other_parameters() -> None:
    family = resolve_families("shared-prefix")[0]
    first, again = sample(family, 0, 3), sample(family, 0, 3)
    assert first == again
    assert [s.name for s in first] == ["shared-prefix-s0-0", "shared-prefix-s0-1", "shared-prefix-s0-2"]
    assert all(s.family == "shared-prefix" and s.seed == 0 for s in first)
    held_out = sample(family, 1000, 3)
    assert {s.model_dump_json(exclude={"name"}) for s in first}.isdisjoint(
        s.model_dump_json(exclude={"name"}) for s in held_out
    )
    assert len({s.generator.model_dump_json() for s in first}) == 3  # k draws its own parameters


@pytest.mark.parametrize("name", FAMILIES)
def test_every_sample_is_valid_and_within_the_family_ranges(name: str) -> None:
    family = resolve_families(name)[0]
    ranges = family.fleet
    for spec in sample(family, 7, 12):
        fleet = spec.fleet
        assert ranges.engines[0] <= fleet.engines <= ranges.engines[1] and 4 <= fleet.engines <= 16
        assert fleet.profile in ("llama-3.1-8b-h100", "llama-3.1-70b-4xh100")
        assert fleet.slow_engines < fleet.engines and fleet.prefill_engines < fleet.engines
        assert (fleet.prefill_engines > 0) == (name == "pd")
        assert fleet.overrides["num_gpu_blocks"] <= PROFILES[fleet.profile].num_gpu_blocks
        if fleet.slow_engines:
            assert 1.5 <= fleet.slow_factor <= 3.0
        generator = spec.generator.model_dump(exclude_none=True)
        for key, value in generator.items():
            bounds = family.generator[key]
            if isinstance(bounds, list):
                assert bounds[0] <= value <= bounds[1], key
        output = generator["output"]
        assert family.generator["output"]["median"][0] <= output["median"] <= family.generator["output"]["median"][1]
        assert sum(phase.count for phase in spec.arrival) == spec.arrivals


def test_some_samples_have_slow_engines_and_both_profiles() -> None:
    specs = [s for f in resolve_families("all") for s in sample(f, 0, 3)]
    assert 0 < sum(s.fleet.slow_engines > 0 for s in specs) < len(specs)
    assert {s.fleet.profile for s in specs} == {"llama-3.1-8b-h100", "llama-3.1-70b-4xh100"}


def test_the_kv_cache_is_under_pressure_but_holds_the_longest_requests() -> None:
    for family in resolve_families("shared-prefix,rag"):
        for spec in sample(family, 3, 4):
            generator = spec.generator
            m = mix(generator, spec.arrivals)
            profile = Fleet.from_spec(spec.fleet).profiles[0]
            per_engine = profile.num_gpu_blocks * 16
            assert per_engine >= 2 * m.longest
            rate = spec.arrival[0].rate / spec.fleet.engines  # type: ignore[union-attr]
            # Beyond the room for its running requests, one engine holds less than the pool; the fleet more (unless
            # the profile's own cache is the limit).
            assert per_engine - headroom(m, rate, profile) < m.pool
            if profile.num_gpu_blocks < PROFILES[spec.fleet.profile].num_gpu_blocks:
                assert spec.fleet.engines * (per_engine - headroom(m, rate, profile)) > 1.1 * m.pool


def test_agentic_sessions_grow_to_tens_of_thousands_of_tokens() -> None:
    spec = sample(resolve_families("agentic")[0], 0, 1)[0]
    requests = build(spec, 0).requests
    assert 800 <= len(requests) <= 2500
    longest: dict[str, int] = {}
    for r in requests:
        session = r.request_id.split("-")[0]
        longest[session] = max(longest.get(session, 0), len(r.prompt_token_ids))
    assert 3 <= len({r.request_id.split("-")[1] for r in requests}) <= 20
    mean = sum(longest.values()) / len(longest)
    assert 8_000 < mean < 40_000
    assert min(r.max_tokens for r in requests) >= 50 and max(r.max_tokens for r in requests) <= 300


def test_rag_prompts_are_8k_to_32k_tokens_and_share_documents() -> None:
    spec = sample(resolve_families("rag")[0], 0, 1)[0]
    assert isinstance(spec.generator, RagSpec)
    requests = build(spec, 0).requests
    lengths = [len(r.prompt_token_ids) for r in requests]
    assert min(lengths) >= 8_000 and max(lengths) <= 32_000
    instruction = spec.generator.instruction_tokens * 4
    document = spec.generator.document_tokens * 4
    firsts = [r.prompt[instruction : instruction + document] for r in requests]
    assert len(set(firsts)) < len(firsts) / 2  # popular documents come first again and again


def test_diurnal_samples_rise_and_fall() -> None:
    spec = sample(resolve_families("diurnal")[0], 0, 1)[0]
    phase = spec.arrival[0]
    assert isinstance(phase, SinusoidPhase) and 0.5 <= phase.amplitude <= 0.9
    cycles = phase.count / phase.mean_rate / phase.period_s
    assert 1 <= cycles <= 3.001


def test_mean_output_of_the_clipped_lognormal() -> None:
    assert mean_output(OutputLength(median=100, sigma=0.0, min=1, max=1000)) == pytest.approx(100)
    # Unclipped lognormal mean: median * exp(sigma^2 / 2) = 100 * exp(0.125) = 113.3
    assert mean_output(OutputLength(median=100, sigma=0.5, min=1, max=100_000)) == pytest.approx(113.3, rel=0.01)
    assert mean_output(OutputLength(median=100, sigma=2.0, min=50, max=150)) == pytest.approx(100, abs=5)


def test_the_calibrated_rate_follows_the_formula() -> None:
    profile = PROFILES["llama-3.1-8b-h100"]
    m = Mix(requests=1, unique=1000, shared=2000, pool=20_000, output=100, context=3000, longest=4000)
    # prefill: (1000 + min(2000, 4 x 20,000 / 100)) x 36 us = 1800 x 36 us = 64.8 ms
    # decode: 100 x (6 ms / 64 + 30 us + 3000 x 0.039 us) = 100 x 0.24075 ms = 24.075 ms
    rate = calibrated_rate(m, 100, profile, [1.0] * 4, 0, 0.8)
    assert rate == pytest.approx(0.8 * 4 / (0.0648 + 0.024075))
    # A slow engine (factor 2) counts half; on P/D the busier pool decides.
    assert calibrated_rate(m, 100, profile, [1.0] * 3 + [2.0], 0, 0.8) == pytest.approx(rate * 3.5 / 4)
    pd = calibrated_rate(m, 100, profile, [1.0] * 4, 1, 0.8)
    prefill_s = (1000 + min(2000, 1 * 20_000 / 100)) * 36e-6
    assert pd == pytest.approx(0.8 / max(prefill_s / 1, 0.024075 / 3))


def test_shared_prefix_mix_counts_the_groups_that_appear() -> None:
    output = OutputLength(median=10, sigma=0.0, min=1, max=20)
    spec = SharedPrefixSpec(kind="shared-prefix", groups=2, system_tokens=1000, question_tokens=50, output=output)
    m = mix(spec, 1)
    # One arrival meets 2 x (1 - (1 - 1/2)^1) = 1 group on average.
    assert (m.unique, m.shared, m.output, m.longest) == (50, 1000, 10, 1070) and m.pool == pytest.approx(1000)
    agentic = AgenticSpec(
        kind="agentic",
        system_prompts=1,
        system_tokens=1000,
        task_tokens=500,
        turns_min=2,
        turns_max=4,
        tool_tokens_min=100,
        tool_tokens_max=300,
        pause_min_s=0,
        pause_max_s=1,
        output=output,
    )
    m = mix(agentic, 10)
    # 3 turns on average; each later turn adds an answer (10) and a tool output (200).
    assert (m.requests, m.unique, m.output) == (3, 500 + 2 * 210, 30)


def test_draw_ranges_and_choices() -> None:
    rng = random.Random(0)
    drawn = [draw({"a": [1, 3], "b": [0.5, 1.5], "c": {"choice": ["x", "y"]}, "d": [{"e": [5, 5]}]}, rng)]
    for value in drawn:
        assert value["a"] in (1, 2, 3) and 0.5 <= value["b"] <= 1.5 and value["c"] in ("x", "y")
        assert value["d"] == [{"e": 5}]


def test_a_family_file_by_path_and_its_errors(tiny_family_file: Path, tmp_path: Path) -> None:
    family = resolve_families(str(tiny_family_file))[0]
    specs = sample(family, 0, 2)
    assert [s.name for s in specs] == ["tiny-family-s0-0", "tiny-family-s0-1"]
    assert all(30 <= len(build(s, 0).requests) <= 40 for s in specs)
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_FAMILY.replace("groups: [2, 4]", "groups: [0, 0]"))
    with pytest.raises(WorkloadError, match=r"bad.yaml: .*groups: Input should be greater than or equal to 1"):
        load_family(bad)
    bad.write_text(TINY_FAMILY.replace("profiles: [tiny]", "profiles: [h200]"))
    with pytest.raises(WorkloadError, match="unknown profile"):
        load_family(bad)
    with pytest.raises(WorkloadError, match="unknown family 'nope'; known: agentic, bursty"):
        resolve_families("nope")
