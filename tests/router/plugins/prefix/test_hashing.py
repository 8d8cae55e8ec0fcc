import pytest
import xxhash

from kvroute.router.framework import ApiKind, CycleState, LLMRequest
from kvroute.router.plugins.prefix import hashing
from kvroute.router.plugins.prefix.hashing import (
    PROMPT_HASHES,
    block_hashes,
    estimate_tokens,
    model_seed,
    prompt_hashes,
)

SEED = model_seed("llama")


def request(prompt: str, model: str = "llama", body: dict[str, object] | None = None) -> LLMRequest:
    return LLMRequest(request_id="r", model=model, api=ApiKind.COMPLETIONS, prompt=prompt, body=body or {}, headers={})


def text(n: int, offset: int = 0) -> str:
    return "".join(chr(ord("a") + (i + offset) % 26) for i in range(n))


def test_each_block_is_hashed_with_the_previous_hash_as_seed() -> None:
    prompt = text(128)
    h0 = xxhash.xxh64_intdigest(prompt[:64].encode(), xxhash.xxh64_intdigest(b"llama"))
    h1 = xxhash.xxh64_intdigest(prompt[64:].encode(), h0)
    assert block_hashes(prompt, SEED, 64, 256) == [h0, h1]


def test_block_count_includes_the_partial_last_block() -> None:
    assert len(block_hashes(text(200), SEED, 64, 256)) == 4  # 64 + 64 + 64 + 8
    assert len(block_hashes(text(128), SEED, 64, 256)) == 2
    assert len(block_hashes(text(10), SEED, 64, 256)) == 1
    assert block_hashes("", SEED, 64, 256) == []


def test_partial_last_block_hash_covers_only_its_characters() -> None:
    prompt = text(200)
    hashes = block_hashes(prompt, SEED, 64, 256)
    assert hashes[3] == xxhash.xxh64_intdigest(prompt[192:].encode(), hashes[2])


def test_prompts_share_hashes_exactly_as_far_as_they_share_blocks() -> None:
    a = block_hashes(text(128) + "x" * 64, SEED, 64, 256)
    b = block_hashes(text(128) + "y" * 64, SEED, 64, 256)
    assert a[:2] == b[:2]
    assert a[2] != b[2]


def test_a_block_hash_depends_on_every_block_before_it() -> None:
    a = block_hashes("a" * 64 + "same" * 16, SEED, 64, 256)
    b = block_hashes("b" * 64 + "same" * 16, SEED, 64, 256)
    assert a[1] != b[1]


def test_the_model_seeds_the_chain() -> None:
    a = block_hashes(text(128), model_seed("llama"), 64, 256)
    b = block_hashes(text(128), model_seed("mistral"), 64, 256)
    assert a[0] != b[0]
    assert a[1] != b[1]


def test_cache_salt_separates_tenants() -> None:
    assert model_seed("llama") == xxhash.xxh64_intdigest(b"llama")
    assert model_seed("llama", "tenant-1") == xxhash.xxh64_intdigest(b"llama\0tenant-1")
    plain = prompt_hashes(CycleState(), request(text(64)), block_chars=64, max_blocks=256)
    salted = prompt_hashes(CycleState(), request(text(64), body={"cache_salt": "t"}), block_chars=64, max_blocks=256)
    assert plain.hashes != salted.hashes


def test_truncation_keeps_the_first_blocks_and_counts_all() -> None:
    prompt = text(64 * 20)
    full = block_hashes(prompt, SEED, 64, 256)
    truncated = prompt_hashes(CycleState(), request(prompt), block_chars=64, max_blocks=4)
    assert len(full) == 20
    assert list(truncated.hashes) == full[:4]
    assert truncated.total_blocks == 20
    assert not truncated.complete


def test_non_ascii_blocks_are_cut_by_characters() -> None:
    prompt = "é" * 100
    hashes = block_hashes(prompt, SEED, 64, 256)
    assert len(hashes) == 2
    assert hashes[0] == xxhash.xxh64_intdigest(("é" * 64).encode(), SEED)
    # An ASCII prefix hashes the same whether or not non-ASCII text follows it.
    assert block_hashes(text(128) + "é", SEED, 64, 256)[:2] == block_hashes(text(128), SEED, 64, 256)


def test_hashes_are_computed_once_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = hashing.block_hashes

    def counting(text: str, seed: int, block_chars: int, max_blocks: int) -> list[int]:
        calls.append(max_blocks)
        return real(text, seed, block_chars, max_blocks)

    monkeypatch.setattr(hashing, "block_hashes", counting)
    state, req = CycleState(), request(text(64 * 10))
    first = prompt_hashes(state, req, block_chars=64, max_blocks=8)
    assert prompt_hashes(state, req, block_chars=64, max_blocks=8) is first
    assert state.read(PROMPT_HASHES) is first
    # Fewer blocks: served from the stored hashes.
    assert prompt_hashes(state, req, block_chars=64, max_blocks=3).hashes == first.hashes[:3]
    # More blocks: computed again, and stored for later readers.
    longer = prompt_hashes(state, req, block_chars=64, max_blocks=256)
    assert longer.hashes[:8] == first.hashes
    assert state.read(PROMPT_HASHES) is longer
    # Complete hashes serve any maximum.
    assert prompt_hashes(state, req, block_chars=64, max_blocks=1000) is longer
    assert calls == [8, 256]


def test_another_block_size_does_not_replace_the_stored_hashes() -> None:
    state, req = CycleState(), request(text(256))
    first = prompt_hashes(state, req, block_chars=64, max_blocks=256)
    other = prompt_hashes(state, req, block_chars=32, max_blocks=256)
    assert len(other.hashes) == 8
    assert state.read(PROMPT_HASHES) is first


def test_token_estimate_is_a_quarter_of_the_characters_rounded_up() -> None:
    assert [estimate_tokens(n) for n in (0, 1, 4, 5, 1000, -3)] == [0, 1, 1, 2, 250, 0]
