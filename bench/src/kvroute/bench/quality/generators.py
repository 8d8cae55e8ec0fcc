"""Turning a `WorkloadSpec` into the requests of one run: arrival times, then what each arrival asks.

Everything is drawn from one `random.Random` seeded with `"<name>:<workload seed>:<run seed>"`, so a workload
and a seed always give the same requests. Text is synthetic (lowercase letters and spaces, a whole number of
4-character tokens per segment) and tokenized by the simulator's tokenizer, so the router's character-based
prefix estimate and the engine's token-based cache agree on what two prompts share.

Arrival phases (`arrival`), one after the other:
- `poisson`: exponential gaps at `rate`;
- `ramp`: exponential gaps whose rate grows linearly from `start_rate` to `end_rate` over the phase, which lasts
  `2 * count / (start_rate + end_rate)` seconds on average;
- `burst`: `count` requests at one instant, or uniformly within `spread_s`.

Generators (`generator.kind`):
- `shared-prefix`: one of `groups` system prompts (`system_tokens`) + a question (`question_tokens`, unique per
  request; or, with `users_per_group`, one of that group's fixed questions, so whole prompts repeat, as in llm-d's
  73%-capacity benchmark); `output_tokens` each. With `lora`, each request also names an adapter
  (`adapter-<k>`, popularity Zipf(`zipf`)), whose KV cache is separate from the base model's.
- `multi-turn`: each arrival starts a session of `turns` chat turns on one of `system_prompts` system prompts.
  Turn k's prompt is the chat template over the system prompt, the k previous user messages and answers, and
  the new user message, so prompts grow turn by turn. The answers are workload text of `answer_tokens` tokens
  (the length the engine generates). Open loop: turn k + 1 arrives an exponential think time (mean
  `think_time_s`) plus `answer_tokens` x 10 ms (a nominal generation time) after turn k.
- `varied`: prompt length ~ Normal(`isl_mean`, `isl_spread`) clipped to [`isl_min`, `isl_max`]; its first
  `isl_mean / 2` tokens are one of `groups` shared prefixes, the rest unique; output uniform in
  [`osl_min`, `osl_max`].
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

from kvroute.bench.quality.workloads import (
    ArrivalPhase,
    BurstPhase,
    Fleet,
    MultiTurnSpec,
    PoissonPhase,
    SharedPrefixSpec,
    VariedSpec,
    WorkloadSpec,
)
from kvroute.simulator.des.harness import WorkloadRequest
from kvroute.simulator.tokenizer import CHARS_PER_TOKEN, Tokenizer

# Byte -> one of 32 characters (26 letters, 6 spaces): 256 / 32 = 8 bytes each, so every character is equally
# likely, and a translation of random bytes is much faster than drawing characters one by one.
_TABLE = bytes((b"abcdefghijklmnopqrstuvwxyz      ")[i % 32] for i in range(256))
NOMINAL_TOKEN_TIME_S = 0.01


@dataclass(frozen=True)
class Workload:
    spec: WorkloadSpec
    fleet: Fleet
    requests: list[WorkloadRequest]


def build(spec: WorkloadSpec, seed: int) -> Workload:
    rng = random.Random(f"{spec.name}:{spec.seed}:{seed}")
    times = arrival_times(spec.arrival, rng)
    generator = spec.generator
    tokenizer = Tokenizer()
    if isinstance(generator, SharedPrefixSpec):
        requests = _shared_prefix(generator, times, rng, tokenizer)
    elif isinstance(generator, MultiTurnSpec):
        requests = _multi_turn(generator, times, rng, tokenizer)
    else:
        requests = _varied(generator, times, rng, tokenizer)
    requests.sort(key=lambda r: r.arrival_time)
    return Workload(spec, Fleet.from_spec(spec.fleet), requests)


def text(rng: random.Random, tokens: int) -> str:
    return rng.randbytes(tokens * CHARS_PER_TOKEN).translate(_TABLE).decode("ascii")


def arrival_times(phases: list[ArrivalPhase], rng: random.Random) -> list[float]:
    times: list[float] = []
    now = 0.0
    for phase in phases:
        now += phase.after_s
        if isinstance(phase, PoissonPhase):
            for _ in range(phase.count):
                now += rng.expovariate(phase.rate)
                times.append(now)
        elif isinstance(phase, BurstPhase):
            start = now
            offsets = sorted(rng.random() * phase.spread_s for _ in range(phase.count)) if phase.spread_s else []
            times.extend(start + offset for offset in offsets or [0.0] * phase.count)
            now = start + phase.spread_s
        else:
            start = now
            duration = 2 * phase.count / (phase.start_rate + phase.end_rate)
            slope = (phase.end_rate - phase.start_rate) / duration
            for _ in range(phase.count):
                now += rng.expovariate(phase.start_rate + slope * min(now - start, duration))
                times.append(now)
    return times


def _zipf_cumulative(n: int, exponent: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (k + 1) ** exponent for k in range(n)))


def _shared_prefix(
    spec: SharedPrefixSpec, times: list[float], rng: random.Random, tokenizer: Tokenizer
) -> list[WorkloadRequest]:
    systems = [text(rng, spec.system_tokens) for _ in range(spec.groups)]
    system_ids = [tokenizer.encode(s) for s in systems]
    fixed = None
    if spec.users_per_group:
        fixed = [[text(rng, spec.question_tokens) for _ in range(spec.users_per_group)] for _ in systems]
    cumulative = _zipf_cumulative(spec.lora.adapters, spec.lora.zipf) if spec.lora else []
    requests = []
    for n, at in enumerate(times):
        group = rng.randrange(spec.groups)
        question = rng.choice(fixed[group]) if fixed else text(rng, spec.question_tokens)
        lora = None
        if cumulative:
            lora = f"adapter-{bisect.bisect_right(cumulative, rng.random() * cumulative[-1])}"
        requests.append(
            WorkloadRequest(
                request_id=f"req-{n:06d}",
                arrival_time=at,
                prompt=systems[group] + question,
                prompt_token_ids=system_ids[group] + tokenizer.encode(question),
                max_tokens=spec.output_tokens,
                lora_name=lora,
            )
        )
    return requests


def _multi_turn(
    spec: MultiTurnSpec, times: list[float], rng: random.Random, tokenizer: Tokenizer
) -> list[WorkloadRequest]:
    systems = [text(rng, spec.system_tokens) for _ in range(spec.system_prompts)]
    requests = []
    for session, start in enumerate(times):
        messages = [{"role": "system", "content": rng.choice(systems)}]
        at = start
        for turn in range(spec.turns):
            messages.append({"role": "user", "content": text(rng, spec.user_tokens)})
            prompt = tokenizer.render_chat(messages)
            requests.append(
                WorkloadRequest(
                    request_id=f"s{session:05d}-t{turn:02d}",
                    arrival_time=at,
                    prompt=prompt,
                    prompt_token_ids=tokenizer.encode(prompt),
                    max_tokens=spec.answer_tokens,
                )
            )
            messages.append({"role": "assistant", "content": text(rng, spec.answer_tokens)})
            at += rng.expovariate(1.0 / spec.think_time_s) + spec.answer_tokens * NOMINAL_TOKEN_TIME_S
    return requests


def _varied(spec: VariedSpec, times: list[float], rng: random.Random, tokenizer: Tokenizer) -> list[WorkloadRequest]:
    prefix_tokens = spec.isl_mean // 2
    prefixes = [text(rng, prefix_tokens) for _ in range(spec.groups)]
    prefix_ids = [tokenizer.encode(p) for p in prefixes]
    requests = []
    for n, at in enumerate(times):
        group = rng.randrange(spec.groups)
        isl = min(spec.isl_max, max(spec.isl_min, round(rng.gauss(spec.isl_mean, spec.isl_spread))))
        rest = text(rng, isl - prefix_tokens)
        requests.append(
            WorkloadRequest(
                request_id=f"req-{n:06d}",
                arrival_time=at,
                prompt=prefixes[group] + rest,
                prompt_token_ids=prefix_ids[group] + tokenizer.encode(rest),
                max_tokens=rng.randint(spec.osl_min, spec.osl_max),
            )
        )
    return requests
