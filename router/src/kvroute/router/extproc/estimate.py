"""Output tokens of a response whose body the router did not see (ext_proc's light response mode).

With `t` the seconds from forwarding the request to the end of its response, `r` the tokens per second and
`max_tokens` the request's `max_tokens` (or `max_completion_tokens`) when it has one:

    estimate = min(max_tokens, round(r * t))

`r` starts at `DEFAULT_TOKENS_PER_SECOND` and follows the responses whose output was counted exactly (a body that
was seen, e.g. a non-streamed answer Envoy sent whole at its end) as an exponentially weighted average

    r <- r + ALPHA * (tokens / t - r)

`t` includes queueing and prefill, in the estimate as in the measurement of `r`, so the two stay comparable.
e.g. r = 50, t = 2 s, max_tokens = 64: min(64, 100) = 64; one exact response of 30 tokens in 1 s then gives
r = 50 + 0.1 * (30 - 50) = 48.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_TOKENS_PER_SECOND = 50.0
ALPHA = 0.1
_MIN_SECONDS = 0.001  # shorter responses say nothing about the rate


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


class OutputEstimator:
    __slots__ = ("rate",)

    def __init__(self, rate: float = DEFAULT_TOKENS_PER_SECOND) -> None:
        self.rate = rate

    def observe(self, tokens: int, seconds: float) -> None:
        """A response of `tokens` output tokens, counted exactly, ended `seconds` after it was forwarded."""
        if tokens > 0 and seconds >= _MIN_SECONDS:
            self.rate += ALPHA * (tokens / seconds - self.rate)

    def estimate(self, seconds: float, max_tokens: int | None) -> int:
        tokens = round(self.rate * max(0.0, seconds))
        return tokens if max_tokens is None else min(tokens, max_tokens)
