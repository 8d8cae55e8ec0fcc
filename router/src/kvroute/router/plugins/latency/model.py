"""The step-time model of an engine with continuous batching and chunked prefill, and the TTFT it predicts.

An engine runs steps; each step computes up to `max_batched_tokens` tokens, one per decoding sequence and the
rest for prompts in arrival order (chunked prefill), and lasts

    step = step_overhead + prefill_per_token * prefill_tokens + decode_per_seq * decode_seqs
         + decode_per_context_token * context_tokens

(`context_tokens`: the tokens the decoding sequences attend over, i.e. the KV they hold.)
A new request whose own uncached prompt is `own` tokens, behind `queued` prompt tokens that the engine must
compute first, with `decode` sequences holding `context` tokens decoding beside it, gets its first token after

    work   = queued + own
    budget = max(1, max_batched_tokens - decode)            (prompt tokens per step beside the decodes)
    steps  = max(1, ceil(work / budget))
    ttft   = steps * (step_overhead + decode_per_seq * decode + decode_per_context_token * context)
             + prefill_per_token * work + request_overhead

(`request_overhead`: what a request costs once outside the engine's steps: network round trip, HTTP and SSE
framing, tokenization.)

A request that does not fit in the free KV cache waits first, `wait_steps` decode-only steps
(`ttft_features(..., wait_steps)`), which adds `wait_steps * (step_overhead + decode_per_seq * decode +
decode_per_context_token * context)`.

e.g. with the 8B profile (6 ms, 36 us/token, 30 us/seq, 0.039 us/context token, 8,192 tokens/step), 4,000
queued, 2,000 own, 100 sequences decoding over 200,000 tokens: work 6,000, budget 8,092, 1 step,
ttft = (6 + 3 + 7.8) + 216 + 0 = 232.8 ms with no request overhead.

The same coefficients price an inter-token interval: one step with the prefill tokens scheduled beside the
decodes, `step(prefill_tokens, decode)`. Both are linear in the three coefficients, which is what lets
`learner.CoefficientLearner` fit them from observed TTFTs and inter-token times (`ttft_features`,
`step_features` give the multipliers of each coefficient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Features = tuple[float, float, float, float, float]


@dataclass(frozen=True, slots=True)
class StepCosts:
    """One engine's coefficients, in seconds."""

    prefill_per_token: float
    step_overhead: float
    decode_per_seq: float
    decode_per_context_token: float
    request_overhead: float  # once per request, outside the engine's steps: network, HTTP, tokenization

    def as_tuple(self) -> Features:
        return (
            self.prefill_per_token,
            self.step_overhead,
            self.decode_per_seq,
            self.decode_per_context_token,
            self.request_overhead,
        )


@dataclass(frozen=True, slots=True)
class EngineShape:
    """What bounds a step: tokens per step and sequences per batch."""

    max_batched_tokens: int = 8192
    max_num_seqs: int = 256


def prefill_steps(work: float, decode: float, shape: EngineShape) -> int:
    budget = max(1.0, shape.max_batched_tokens - decode)
    return max(1, math.ceil(work / budget))


def ttft_features(
    queued: float, own: float, decode: float, context: float, shape: EngineShape, wait_steps: float = 0.0
) -> Features:
    """Multipliers of the `StepCosts` coefficients in the predicted TTFT; `wait_steps` decode-only steps come
    first (waiting for KV blocks to free up)."""
    work = queued + own
    steps = prefill_steps(work, decode, shape) + wait_steps
    return (work, steps, steps * decode, steps * context, 1.0)


def step_features(prefill_tokens: float, decode: float, context: float) -> Features:
    """Multipliers of the coefficients in the duration of one step."""
    return (prefill_tokens, 1.0, decode, context, 0.0)


def linear(costs: Features, features: Features) -> float:
    return sum(c * f for c, f in zip(costs, features, strict=True))


def predict_ttft(
    costs: StepCosts,
    queued: float,
    own: float,
    decode: float,
    context: float,
    shape: EngineShape,
    wait_steps: float = 0.0,
) -> float:
    return linear(costs.as_tuple(), ttft_features(queued, own, decode, context, shape, wait_steps))
