from __future__ import annotations

import random

import pytest

from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.engine.profiles import PROFILES, Profile, get_profile
from kvroute.simulator.engine.request import EngineRequest, FinishReason, RequestOutput

H100 = PROFILES["llama-3.1-8b-h100"]
TINY = PROFILES["tiny"]

Outputs = dict[str, list[tuple[float, RequestOutput]]]


def prompt_ids(tag: int, tokens: int) -> list[int]:
    """Token ids unique to `tag` (tags never share a first block)."""
    return [tag * 1_000_003 + i for i in range(tokens)]


def check_conservation(engine: Engine) -> None:
    manager = engine.blocks
    in_use = sum(1 for count in manager.ref_counts if count > 0)
    assert in_use + manager.num_free == manager.num_blocks
    assert all(manager.ref_counts[b] == 0 for b in manager.free)
    assert min(manager.ref_counts) >= 0


def run(engine: Engine, requests: list[EngineRequest], *, start: float = 0.0) -> tuple[Outputs, float]:
    """Step until idle, checking block conservation after every step; outputs with the time they appear."""
    for request in requests:
        engine.add_request(request)
    seen: Outputs = {r.request_id: [] for r in requests}
    now = start
    for _ in range(200_000):
        if not engine.has_work():
            return seen, now
        result = engine.step(now)
        if result.duration == 0 and not result.outputs:
            wake = engine.next_wakeup()
            assert wake is not None, "engine stalled with work left"
            now = wake
            continue
        now += result.duration
        for out in result.outputs:
            seen[out.request_id].append((now, out))
        check_conservation(engine)
    raise AssertionError("engine did not drain")


def first_token_time(outputs: list[tuple[float, RequestOutput]]) -> float:
    return next(t for t, out in outputs if out.new_tokens)


def test_repeated_prompt_is_served_from_cache_and_ttft_drops_by_the_modelled_amount() -> None:
    engine = Engine(H100)
    ids = prompt_ids(1, 3000)
    cold, end = run(engine, [EngineRequest("cold", ids, 4)])
    warm, _ = run(engine, [EngineRequest("warm", ids, 4)], start=end)
    cold_ttft = first_token_time(cold["cold"])
    warm_ttft = first_token_time(warm["warm"]) - end
    assert cold[("cold")][-1][1].num_cached_tokens == 0
    assert warm["warm"][-1][1].num_cached_tokens == 2992  # 187 full blocks; the last token is always computed
    assert cold_ttft == pytest.approx(H100.step_overhead_s + 3000 * H100.prefill_per_token_s)
    assert warm_ttft == pytest.approx(H100.step_overhead_s + 8 * H100.prefill_per_token_s)
    assert cold_ttft - warm_ttft == pytest.approx(2992 * H100.prefill_per_token_s)
    assert engine.prefix_queries_tokens == 6000 and engine.prefix_hits_tokens == 2992


def test_blocks_are_conserved_under_a_random_mixed_load() -> None:
    rng = random.Random(5)
    engine = Engine(TINY)
    requests = [
        EngineRequest(f"r{n}", prompt_ids(rng.randrange(6), rng.randrange(1, 900)), rng.randrange(1, 200))
        for n in range(60)
    ]
    outputs, _ = run(engine, requests)
    for request in requests:
        last = outputs[request.request_id][-1][1]
        assert last.finish_reason is FinishReason.LENGTH
        assert last.num_output_tokens == request.max_tokens
    assert engine.blocks.num_free == TINY.num_gpu_blocks
    assert not engine.running and not engine.waiting


def test_chunked_prefill_spreads_a_long_prompt_over_the_token_budget() -> None:
    profile = H100.with_overrides(max_num_batched_tokens=1024)
    engine = Engine(profile)
    engine.add_request(EngineRequest("long", prompt_ids(2, 3000), 2))
    prefill = [engine.step(0.0).prefill_tokens for _ in range(3)]
    assert prefill == [1024, 1024, 952]
    assert engine.num_running == 1


def test_max_num_seqs_bounds_the_batch_and_the_rest_wait_in_order() -> None:
    engine = Engine(TINY)
    for n in range(12):
        engine.add_request(EngineRequest(f"r{n}", prompt_ids(n, 20), 50))
    engine.step(0.0)
    assert engine.num_running == TINY.max_num_seqs
    assert [s.request_id for s in engine.waiting] == ["r8", "r9", "r10", "r11"]


def test_eviction_under_pressure_drops_the_oldest_prefix() -> None:
    engine = Engine(TINY, record_kv_events=True)  # 256 blocks of 16 tokens
    _, now = run(engine, [EngineRequest("first", prompt_ids(1, 1600), 1)])  # 100 blocks
    assert engine.cached_prefix_tokens(EngineRequest("probe", prompt_ids(1, 1600), 1)) == 1584
    for tag in range(2, 6):  # 4 x 100 more blocks than the cache has room for
        _, now = run(engine, [EngineRequest(f"fill{tag}", prompt_ids(tag, 1600), 1)], start=now)
    assert engine.cached_prefix_tokens(EngineRequest("probe", prompt_ids(1, 1600), 1)) == 0
    again, _ = run(engine, [EngineRequest("again", prompt_ids(1, 1600), 1)], start=now)
    assert again["again"][-1][1].num_cached_tokens == 0
    assert any(type(e).__name__ == "BlockRemoved" for e in engine.drain_kv_events())


def test_preemption_when_blocks_run_out_and_every_request_still_completes() -> None:
    profile = TINY.with_overrides(num_gpu_blocks=40, max_num_seqs=8)  # 640 token slots
    engine = Engine(profile)
    requests = [EngineRequest(f"r{n}", prompt_ids(n, 64), 200) for n in range(6)]  # 6 x 264 tokens
    outputs, _ = run(engine, requests)
    assert engine.num_preemptions > 0
    for request in requests:
        assert outputs[request.request_id][-1][1].num_output_tokens == 200
    assert engine.blocks.num_free == 40


@pytest.mark.parametrize(("per_request", "global_threshold"), [(0.5, None), (None, 0.5)])
def test_cache_hit_threshold_finishes_cold_requests_without_compute(
    per_request: float | None, global_threshold: float | None
) -> None:
    engine = Engine(H100, global_cache_hit_threshold=global_threshold)
    ids = prompt_ids(3, 1000)
    engine.add_request(EngineRequest("cold", ids, 8, cache_hit_threshold=per_request))
    result = engine.step(0.0)
    assert result.duration == 0 and result.prefill_tokens == 0
    (out,) = result.outputs
    assert out.finish_reason is FinishReason.CACHE_THRESHOLD
    assert (out.new_tokens, out.num_output_tokens, out.num_cached_tokens) == (0, 0, 0)
    assert not engine.has_work() and engine.blocks.num_free == H100.num_gpu_blocks
    _, now = run(engine, [EngineRequest("warmup", ids, 1, cache_hit_threshold=0.0)])
    warm, _ = run(engine, [EngineRequest("warm", ids, 8, cache_hit_threshold=per_request)], start=now)
    last = warm["warm"][-1][1]
    assert last.finish_reason is FinishReason.LENGTH and last.num_output_tokens == 8
    assert last.num_cached_tokens == 992


def test_lora_slots_limit_concurrent_adapters() -> None:
    engine = Engine(TINY.with_overrides(max_loras=1))
    engine.add_request(EngineRequest("a", prompt_ids(1, 16), 5, lora_name="alpha"))
    engine.add_request(EngineRequest("b", prompt_ids(2, 16), 5, lora_name="beta"))
    engine.add_request(EngineRequest("c", prompt_ids(3, 16), 5, lora_name="alpha"))
    engine.step(0.0)
    assert [s.request_id for s in engine.running] == ["a", "c"]
    assert engine.lora_adapters() == (["alpha"], ["beta"])


def test_prefill_role_returns_transfer_params_after_one_token() -> None:
    engine = Engine(H100, engine_id="prefill-0")
    request = EngineRequest("p", prompt_ids(4, 500), 100, kv_transfer_params={"do_remote_decode": True})
    outputs, _ = run(engine, [request])
    ((_, out),) = outputs["p"]
    assert out.num_output_tokens == 1 and out.finish_reason is FinishReason.LENGTH
    assert out.kv_transfer_params is not None
    assert out.kv_transfer_params["do_remote_prefill"] is True
    assert out.kv_transfer_params["remote_engine_id"] == "prefill-0"


def test_decode_role_pays_kv_transfer_instead_of_prefill() -> None:
    engine = Engine(H100)
    request = EngineRequest("d", prompt_ids(5, 2000), 3, kv_transfer_params={"do_remote_prefill": True})
    outputs, _ = run(engine, [request])
    transfer = H100.kv_transfer_setup_s + 2000 * H100.kv_transfer_per_token_s
    one_token_step = H100.step_overhead_s + H100.decode_per_seq_s + 1999 * H100.decode_per_context_token_s
    assert first_token_time(outputs["d"]) == pytest.approx(transfer + one_token_step)
    assert outputs["d"][-1][1].num_output_tokens == 3


def test_abort_frees_blocks_and_forgets_the_request() -> None:
    engine = Engine(TINY)
    engine.add_request(EngineRequest("x", prompt_ids(1, 300), 50))
    engine.step(0.0)
    assert engine.blocks.num_free < TINY.num_gpu_blocks
    assert engine.abort("x") is True
    assert engine.abort("x") is False
    assert engine.blocks.num_free == TINY.num_gpu_blocks and not engine.has_work()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (EngineRequest("a", [], 1), "at least one token"),
        (EngineRequest("b", [1], 0), "max_tokens"),
        (EngineRequest("c", list(range(4096)), 1), "max_model_len"),
    ],
)
def test_invalid_requests_are_rejected(request_: EngineRequest, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Engine(TINY).add_request(request_)


def test_profiles_are_looked_up_by_name() -> None:
    assert get_profile("tiny") is TINY
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        get_profile("nope")
    assert isinstance(H100, Profile) and H100.block_size == 16


def test_step_time_formula() -> None:
    assert H100.step_time(100, 10, 5000) == pytest.approx(6e-3 + 100 * 36e-6 + 10 * 30e-6 + 5000 * 0.039e-6)


def test_remote_prefill_waiting_for_blocks_still_transfers_instead_of_computing() -> None:
    engine = Engine(TINY.with_overrides(num_gpu_blocks=10))
    hog = EngineRequest("hog", prompt_ids(1, 100), 20)
    remote = EngineRequest("remote", prompt_ids(2, 64), 2, kv_transfer_params={"do_remote_prefill": True})
    engine.add_request(hog)
    engine.add_request(remote)
    prefill_steps: list[int] = []
    now = 0.0
    while engine.has_work():
        result = engine.step(now)
        prefill_steps.append(result.prefill_tokens)
        now = now + result.duration if result.duration else (engine.next_wakeup() or now)
    assert sum(prefill_steps) == 100  # only the hog's prompt is computed; the remote prompt arrives by transfer


def _preempted_victim(hog_tokens: int, threshold: float | None) -> tuple[Engine, list[RequestOutput], list[int]]:
    """A 20-block engine; "victim" (64-token prompt, 48 tokens of it cached beforehand: 0.75) joins after "hog"
    (128-token prompt, `hog_tokens` to generate) and, the newest running, is preempted when the hog grows. A hog of
    190 tokens ends up holding all 20 blocks, which evicts the victim's cached prompt before it can rejoin.
    Returns the engine, the victim's outputs, and the prefill tokens of every step after the first."""
    engine = Engine(TINY.with_overrides(num_gpu_blocks=20))
    _, now = run(engine, [EngineRequest("warmup", prompt_ids(2, 64), 1)])
    engine.add_request(EngineRequest("hog", prompt_ids(1, 128), hog_tokens))
    engine.add_request(EngineRequest("victim", prompt_ids(2, 64), 100, cache_hit_threshold=threshold))
    victim: list[RequestOutput] = []
    prefills: list[int] = []
    while engine.has_work():
        result = engine.step(now)
        now += result.duration or 0.001
        victim += [out for out in result.outputs if out.request_id == "victim"]
        prefills.append(result.prefill_tokens)
        check_conservation(engine)
    return engine, victim, prefills[1:]


def test_a_preempted_request_is_checked_again_with_the_cache_it_finds_when_it_rejoins() -> None:
    engine, victim, prefills = _preempted_victim(hog_tokens=190, threshold=0.5)

    assert engine.num_preemptions == 1
    produced = victim[-2].num_output_tokens
    assert 0 < produced < 100  # it was decoding when preempted
    last = victim[-1]
    # Its prompt was evicted meanwhile: 0 of 64 cached < 0.5, so it finishes as a cold request would at first
    # admission, without recomputing its prompt and its output here.
    assert last.finish_reason is FinishReason.CACHE_THRESHOLD
    assert (last.new_tokens, last.num_output_tokens) == (0, produced)
    assert last.num_cached_tokens == 48  # what it was served from cache when it first joined, as reported then
    assert sum(prefills) == 0
    assert engine.blocks.num_free == 20 and not engine.has_work()


def test_without_a_threshold_the_preempted_request_recomputes_and_completes() -> None:
    engine, victim, prefills = _preempted_victim(hog_tokens=190, threshold=None)

    assert engine.num_preemptions == 1
    assert victim[-1].finish_reason is FinishReason.LENGTH and victim[-1].num_output_tokens == 100
    assert sum(prefills) > 64  # its whole prompt and its output so far, computed again


def test_a_preempted_request_whose_prefix_is_still_cached_passes_the_check_again() -> None:
    engine, victim, prefills = _preempted_victim(hog_tokens=100, threshold=0.5)

    assert engine.num_preemptions == 1
    assert victim[-1].finish_reason is FinishReason.LENGTH and victim[-1].num_output_tokens == 100
    assert sum(prefills) > 0  # rejoined (48 of 64 prompt tokens still cached: 0.75 >= 0.5) and recomputed the rest
