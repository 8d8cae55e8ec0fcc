"""Prompt -> chained block hashes, computed once per request and shared through `CycleState`.

The router does not tokenise. The prompt text (`LLMRequest.prompt`) is cut into blocks of `block_chars`
characters, `blockSizeTokens * 4` (four characters per token), and each block is hashed with xxhash64, chained
through the seed:

    seed = xxh64(utf8(model))            or xxh64(utf8(model + "\\0" + cache_salt)) when the body has `cache_salt`
    h_0  = xxh64(utf8(block_0), seed=seed)
    h_i  = xxh64(utf8(block_i), seed=h_{i-1})

so `h_i` stands for the whole prefix `block_0 .. block_i`: two prompts for the same model share `h_i` exactly when
they share their first `i + 1` blocks (up to 64-bit collisions). Seeding with the previous hash chains as well as
hashing `block_i || h_{i-1}` would, without building the concatenation. The cache salt keeps tenants that the
engine isolates (vLLM's `cache_salt`) apart here too.

The last block may be shorter than `block_chars`; it is hashed too, so a prompt of 1 to `block_chars` characters
has one hash and an empty prompt has none. Only the first `max_blocks` blocks are hashed (the first
`max_blocks * block_chars` characters); `total_blocks` still counts the blocks of the whole prompt. Because of
the chaining, the hashes of a longer truncation start with those of a shorter one, so one computation per
request serves every plugin that asks for the same block size and at most as many blocks (`prompt_hashes`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import xxhash

from kvroute.router.framework import CycleState, LLMRequest, StateKey

CHARS_PER_TOKEN = 4
DEFAULT_BLOCK_SIZE_TOKENS = 16
DEFAULT_MAX_BLOCKS = 256


@dataclass(frozen=True, slots=True)
class PromptHashes:
    """The chained hashes of one request's prompt, for one block size."""

    hashes: tuple[int, ...]
    block_chars: int
    max_blocks: int
    prompt_chars: int

    @property
    def total_blocks(self) -> int:
        """Blocks of the whole prompt, partial last block included, ignoring the `max_blocks` truncation."""
        return -(-self.prompt_chars // self.block_chars)

    @property
    def complete(self) -> bool:
        """Whether every block of the prompt is hashed (no truncation happened)."""
        return len(self.hashes) == self.total_blocks


PROMPT_HASHES: StateKey[PromptHashes] = StateKey("prompt-hashes")


def model_seed(model: str, cache_salt: str | None = None) -> int:
    key = model if cache_salt is None else f"{model}\0{cache_salt}"
    return xxhash.xxh64_intdigest(key.encode())


def block_hashes(text: str, seed: int, block_chars: int, max_blocks: int) -> list[int]:
    """Chained hashes of the first `max_blocks` blocks of `text`, partial last block included."""
    if block_chars <= 0:
        raise ValueError(f"block_chars must be positive, got {block_chars}")
    text = text[: max_blocks * block_chars]
    digest = xxhash.xxh64_intdigest
    hashes: list[int] = []
    h = seed
    if text.isascii():
        # One encode and byte slices: for ASCII the bytes of a character block are the block's bytes.
        data = text.encode("ascii")
        for start in range(0, len(data), block_chars):
            h = digest(data[start : start + block_chars], h)
            hashes.append(h)
    else:
        for start in range(0, len(text), block_chars):
            h = digest(text[start : start + block_chars].encode(), h)
            hashes.append(h)
    return hashes


def prompt_hashes(state: CycleState, request: LLMRequest, *, block_chars: int, max_blocks: int) -> PromptHashes:
    """The request's hashes for `block_chars`, truncated at `max_blocks`: read from `state` when an earlier plugin
    of this request computed enough of them, else computed and stored there for the next one."""
    cached = state.read(PROMPT_HASHES)
    same_size = cached is None or cached.block_chars == block_chars
    if cached is not None and same_size and (cached.max_blocks >= max_blocks or cached.complete):
        if len(cached.hashes) <= max_blocks:
            return cached
        return replace(cached, hashes=cached.hashes[:max_blocks], max_blocks=max_blocks)
    salt = request.body.get("cache_salt")
    seed = model_seed(request.model, salt if isinstance(salt, str) else None)
    computed = PromptHashes(
        hashes=tuple(block_hashes(request.prompt, seed, block_chars, max_blocks)),
        block_chars=block_chars,
        max_blocks=max_blocks,
        prompt_chars=len(request.prompt),
    )
    # A different block size (two plugins configured differently) is recomputed each time rather than evicting
    # the first plugin's hashes, so the common, consistent configuration always hashes once.
    if same_size:
        state.write(PROMPT_HASHES, computed)
    return computed


def estimate_tokens(chars: int) -> int:
    """`ceil(chars / 4)`: the token count the router assumes for `chars` characters."""
    return -(-max(chars, 0) // CHARS_PER_TOKEN)
