"""What a prefix scorer found for a request, published in `CycleState` for the plugins that build on it.

A prefix scorer (`prefix-cache-scorer`, or any plugin scoring prefix matches) writes one `PrefixMatchInfo` under
`prefix_match_key(<its plugin name>)`; consumers name that plugin in their `prefixPluginName` parameter:

- `no-hit-lru-scorer`: the request is cold when `not info.any_hit()`;
- `pd-profile-handler`: `info.uncached_tokens(decode_endpoint_id)` decides whether to disaggregate;
- `active-blocks-scorer`: `matched_blocks` are the blocks an endpoint need not prefill.

Token counts are estimates, four characters per token:

    prompt_tokens      = ceil(prompt_chars / 4)
    uncached_tokens(e) = ceil(max(0, prompt_chars - matched_blocks[e] * block_chars) / 4)

which is `prompt_tokens - matched_blocks[e] * block_tokens` whenever the block size is a whole number of tokens.
A scorer that knows the prompt's real tokens (`precise-prefix-cache-scorer`) publishes through `from_tokens`, in
the same units (`block_chars = 4 * block_tokens`, `prompt_chars = 4 * prompt_tokens`), so every consumer reads its
exact token counts unchanged. A scorer runs once per profile; each run adds its candidates' matches to the same
info.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kvroute.router.framework import Endpoint, SchedulingResult, StateKey
from kvroute.router.plugins.prefix.hashing import CHARS_PER_TOKEN, estimate_tokens


@dataclass(frozen=True, slots=True)
class PrefixMatchInfo:
    matched_blocks: Mapping[str, int]  # endpoint id -> consecutive blocks matched from the start; absent = 0
    total_blocks: int  # blocks matched against (the prompt's, truncated at the scorer's maximum)
    block_chars: int
    prompt_chars: int  # the whole prompt, not truncated

    @classmethod
    def from_tokens(
        cls, matched_blocks: Mapping[str, int], total_blocks: int, block_tokens: int, prompt_tokens: int
    ) -> PrefixMatchInfo:
        """The info of a scorer counting in real tokens: blocks of `block_tokens`, a prompt of `prompt_tokens`."""
        return cls(matched_blocks, total_blocks, block_tokens * CHARS_PER_TOKEN, prompt_tokens * CHARS_PER_TOKEN)

    @property
    def block_tokens(self) -> float:
        return self.block_chars / CHARS_PER_TOKEN

    @property
    def prompt_tokens(self) -> int:
        return estimate_tokens(self.prompt_chars)

    def any_hit(self) -> bool:
        """Whether any endpoint matched at least one block."""
        return any(self.matched_blocks.values())

    def uncached_tokens(self, endpoint_id: str) -> int:
        """Estimated prompt tokens the endpoint would have to compute (not found in its prefix cache)."""
        return self._uncached(self.matched_blocks.get(endpoint_id, 0))

    def uncached_tokens_of(self, endpoint_ids: Iterable[str]) -> list[int]:
        """`uncached_tokens` of each endpoint, in order; computed once per distinct match length."""
        matched = self.matched_blocks
        tokens = {blocks: self._uncached(blocks) for blocks in {0, *matched.values()}}
        get = matched.get
        return [tokens[get(endpoint_id, 0)] for endpoint_id in endpoint_ids]

    def _uncached(self, matched_blocks: int) -> int:
        return estimate_tokens(self.prompt_chars - matched_blocks * self.block_chars)


_KEYS: dict[str, StateKey[PrefixMatchInfo]] = {}


def prefix_match_key(plugin_name: str) -> StateKey[PrefixMatchInfo]:
    """The key under which the prefix plugin named `plugin_name` publishes its match info (one per name)."""
    key = _KEYS.get(plugin_name)
    if key is None:
        key = _KEYS.setdefault(plugin_name, StateKey(f"{plugin_name}/prefix-match"))
    return key


def prefix_holders(result: SchedulingResult) -> list[Endpoint]:
    """The endpoints that will hold the request's prefix once served: the target of every profile that picked
    one (decode and prefill in P/D), primary profile first, each endpoint once."""
    targets = [result.profile_results[result.primary_profile]]
    targets += [r for name, r in result.profile_results.items() if name != result.primary_profile]
    holders: list[Endpoint] = []
    for profile_result in targets:
        target = profile_result.primary
        if target is not None and target not in holders:
            holders.append(target)
    return holders
