import pytest

from kvroute.router.framework import (
    ApiKind,
    CycleState,
    Endpoint,
    LLMRequest,
    ProfileResult,
    ResponseInfo,
    SchedulingResult,
)
from kvroute.router.plugins.prefix import hashing
from kvroute.router.plugins.prefix.match import PrefixMatchInfo, prefix_match_key
from kvroute.router.plugins.scorers.active_blocks import ActiveBlocksScorer
from kvroute.router.plugins.scorers.prefix_cache import PrefixCacheScorer

W1, W2, W3 = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3))
BLOCK = 64  # characters per block at the default 16 tokens


def blocks(n: int, tag: str) -> str:
    """`n` full blocks of text unique to `tag`."""
    return "".join(f"{tag}:{i:0{BLOCK - len(tag) - 1}d}" for i in range(n))


def request(prompt: str, request_id: str = "r") -> LLMRequest:
    return LLMRequest(request_id=request_id, model="m", api=ApiKind.COMPLETIONS, prompt=prompt, body={}, headers={})


def scorer(**params: object) -> ActiveBlocksScorer:
    return ActiveBlocksScorer("active-blocks-scorer", ActiveBlocksScorer.Params.model_validate(params))


def start(s: ActiveBlocksScorer, prompt: str, target: Endpoint, state: CycleState | None = None) -> CycleState:
    """A request scheduled to `target` and forwarded; its state is returned for the response hooks."""
    state = state or CycleState()
    s.pre_request(state, request(prompt), SchedulingResult({"decode": ProfileResult((target,))}, "decode"))
    return state


def chunk(s: ActiveBlocksScorer, state: CycleState, target: Endpoint, output_tokens: int) -> None:
    s.on_response_chunk(state, request(""), target, ResponseInfo(status=200, output_tokens=output_tokens), 1)


def complete(s: ActiveBlocksScorer, state: CycleState, error: str | None = None) -> None:
    s.on_response_complete(state, request(""), None, ResponseInfo(error=error))


def dynamo_example(s: ActiveBlocksScorer) -> tuple[CycleState, LLMRequest]:
    """Dynamo's example workers as (prefill, decode) blocks = (8, 10), (5, 5), (2, 9), for a new request R of
    n = 2 blocks. Its (cached 2, 5, 8) column cannot hold for one request together with those decode numbers
    (decode_e >= n and cached_e <= n), so the same costs are built from state this scorer can reach:

        W1: 2 requests in flight, 6 blocks still prefilling and 2 decoding; R not cached:
            prefill = (2 - 0) + 6 = 8,  decode = 8 active + 2 new = 10
        W2: 1 request prefilling R's 2 blocks + 3 more; R cached (prefix info says 2 blocks):
            prefill = (2 - 2) + 5 = 5,  decode = 5 active + 0 new = 5
        W3: 1 request of 7 blocks, decoding; R not cached:
            prefill = (2 - 0) + 0 = 2,  decode = 7 active + 2 new = 9
    """
    r = blocks(2, "R")
    start(s, blocks(6, "w1a"), W1)
    chunk(s, start(s, blocks(2, "w1b"), W1), W1, 1)
    start(s, r + blocks(3, "w2"), W2)
    chunk(s, start(s, blocks(7, "w3"), W3), W3, 1)
    state = CycleState()
    state.write(prefix_match_key("prefix-cache-scorer"), PrefixMatchInfo({W2.id: 2}, 2, BLOCK, len(r)))
    return state, request(r)


def test_dynamo_cost_example() -> None:
    s = scorer()
    state, r = dynamo_example(s)
    assert [s.active_blocks(w.id) for w in (W1, W2, W3)] == [8, 5, 7]
    assert [s.prefilling_blocks(w.id) for w in (W1, W2, W3)] == [6, 5, 0]
    # costs 18, 10, 11: normalised (18 - cost) / (18 - 10)
    assert s.score(state, r, [W1, W2, W3]) == {W1.id: 0.0, W2.id: 1.0, W3.id: 0.875}


def test_overlap_weight_scales_the_prefill_blocks() -> None:
    s = scorer(overlapWeight=2.0)
    state, r = dynamo_example(s)
    # costs 2*8 + 10 = 26, 2*5 + 5 = 15, 2*2 + 9 = 13
    assert s.score(state, r, [W1, W2, W3]) == pytest.approx({W1.id: 0.0, W2.id: 11 / 13, W3.id: 1.0})


def test_without_prefix_info_every_block_is_uncached() -> None:
    s = scorer()
    start(s, blocks(4, "a"), W1)  # W1: 4 active, 4 prefilling
    # n = 4 for a fresh request: W1 (4 + 4) + (4 + 4) = 16, W2 4 + 4 = 8
    assert s.score(CycleState(), request(blocks(4, "b")), [W1, W2]) == {W1.id: 0.0, W2.id: 1.0}


def test_shared_prefix_blocks_count_once() -> None:
    s = scorer()
    start(s, blocks(4, "a"), W1)
    start(s, blocks(4, "a"), W1)
    start(s, blocks(4, "a") + blocks(1, "b"), W1)
    assert s.active_blocks(W1.id) == 5
    assert s.prefilling_blocks(W1.id) == 13  # each request prefills its own copy until its first token


def test_prefix_info_with_another_block_size_is_converted() -> None:
    s = scorer()
    prompt = blocks(4, "a")
    state = CycleState()
    # one 128-character block matched = 2 blocks of 64
    state.write(prefix_match_key("prefix-cache-scorer"), PrefixMatchInfo({W1.id: 1}, 2, 128, len(prompt)))
    start(s, prompt, W1, state)
    assert s.prefilling_blocks(W1.id) == 2


def test_output_adds_one_block_per_block_size_tokens() -> None:
    s = scorer()
    state = start(s, blocks(2, "a"), W1)
    chunk(s, state, W1, 15)
    assert (s.active_blocks(W1.id), s.prefilling_blocks(W1.id)) == (2, 0)
    chunk(s, state, W1, 16)
    assert s.active_blocks(W1.id) == 3
    chunk(s, state, W1, 40)
    assert s.active_blocks(W1.id) == 4


def test_the_prompt_past_the_hashed_prefix_counts_block_by_block() -> None:
    s = scorer()
    start(s, blocks(300, "long"), W1)  # 256 hashed blocks + 44 request-unique ones
    start(s, blocks(300, "long"), W1)
    assert s.active_blocks(W1.id) == 256 + 2 * 44


def test_partial_last_prompt_block_counts() -> None:
    s = scorer()
    start(s, blocks(2, "a") + "tail", W1)
    assert s.active_blocks(W1.id) == 3


@pytest.mark.parametrize("error", [None, "client disconnected", "upstream 500"])
def test_everything_is_released_at_completion(error: str | None) -> None:
    s = scorer()
    states = [start(s, blocks(3, "a") + blocks(i, f"u{i}"), W1) for i in range(5)]
    states.append(start(s, blocks(300, "long"), W2))
    for state in states[:3]:
        chunk(s, state, W1, 50)
    for state in states:
        complete(s, state, error)
        complete(s, state, error)  # a second completion must not release twice
    assert [s.active_blocks(w.id) for w in (W1, W2)] == [0, 0]
    assert [s.prefilling_blocks(w.id) for w in (W1, W2)] == [0, 0]
    # nothing is left behind: no per-endpoint entry, no block owner
    assert s._loads == {}
    assert s._owners == {}


def test_a_fallback_endpoint_takes_the_blocks() -> None:
    s = scorer()
    state = start(s, blocks(3, "a"), W1)
    s.on_response_headers(state, request(""), W2, ResponseInfo(status=200))
    assert [s.active_blocks(W1.id), s.active_blocks(W2.id)] == [0, 3]
    complete(s, state)
    assert s.active_blocks(W2.id) == 0


def test_prompt_hashes_are_shared_with_the_prefix_scorer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = hashing.block_hashes

    def counting(text: str, seed: int, block_chars: int, max_blocks: int) -> list[int]:
        calls.append(max_blocks)
        return real(text, seed, block_chars, max_blocks)

    monkeypatch.setattr(hashing, "block_hashes", counting)
    prefix, active = PrefixCacheScorer("prefix-cache-scorer"), scorer()
    state, r = CycleState(), request(blocks(300, "a"))
    result = SchedulingResult({"decode": ProfileResult((W1,))}, "decode")
    prefix.score(state, r, [W1, W2])
    active.score(state, r, [W1, W2])
    prefix.pre_request(state, r, result)
    active.pre_request(state, r, result)
    assert calls == [256]
    assert active.active_blocks(W1.id) == 300


def test_all_equal_costs_score_one() -> None:
    assert scorer().score(CycleState(), request(blocks(2, "a")), [W1, W2]) == {W1.id: 1.0, W2.id: 1.0}


def test_params() -> None:
    params = ActiveBlocksScorer.Params()
    assert (params.overlap_weight, params.block_size_tokens, params.prefix_plugin_name) == (
        1.0,
        16,
        "prefix-cache-scorer",
    )
    with pytest.raises(ValueError):
        ActiveBlocksScorer.Params.model_validate({"overlapWeight": -1})
