"""Turning a `WorkloadSpec` into the requests of one run: arrival times, then what each arrival asks.

Everything is drawn from one `random.Random` seeded with `"<name>:<workload seed>:<run seed>"`, so a workload
and a seed always give the same requests. Text is synthetic (lowercase letters and spaces, a whole number of
4-character tokens per segment) and tokenized by the simulator's tokenizer, so the router's character-based
prefix estimate and the engine's token-based cache agree on what two prompts share.

Arrival phases (`arrival`), one after the other:
- `poisson`: exponential gaps at `rate`;
- `ramp`: exponential gaps whose rate grows linearly from `start_rate` to `end_rate` over the phase, which lasts
  `2 * count / (start_rate + end_rate)` seconds on average;
- `burst`: `count` requests at one instant, or uniformly within `spread_s`;
- `sinusoid`: a Poisson process of rate `mean_rate * (1 - amplitude * cos(2 pi t / period_s))`, drawn by
  thinning: candidates at the peak rate `mean_rate * (1 + amplitude)`, each kept with probability rate(t) / peak.

Generators (`generator.kind`):
- `shared-prefix`: one of `groups` system prompts (`system_tokens`) + a question (`question_tokens`, unique per
  request; or, with `users_per_group`, one of that group's fixed questions, so whole prompts repeat, as in llm-d's
  73%-capacity benchmark); `output_tokens` each. With `lora`, each request also names an adapter
  (`adapter-<k>`, popularity Zipf(`zipf`)), whose KV cache is separate from the base model's. Groups are equally
  likely, or with `group_zipf` group k has popularity 1 / (k + 1) ** group_zipf (tenants of unequal size).
- `multi-turn`: each arrival starts a session of `turns` chat turns on one of `system_prompts` system prompts.
  Turn k's prompt is the chat template over the system prompt, the k previous user messages and answers, and
  the new user message, so prompts grow turn by turn. The answers are workload text of `answer_tokens` tokens
  (the length the engine generates). Open loop: turn k + 1 arrives an exponential think time (mean
  `think_time_s`) plus `answer_tokens` x 10 ms (a nominal generation time) after turn k.
- `agentic`: each arrival starts a tool loop of uniform [`turns_min`, `turns_max`] turns: system prompt (one of
  `system_prompts`) + a task (`task_tokens`); each turn's answer (drawn from `output`) and a tool output
  (uniform [`tool_tokens_min`, `tool_tokens_max`]) are appended to the chat for the next turn, which arrives
  the answer's nominal generation time plus a uniform [`pause_min_s`, `pause_max_s`] tool time later.
- `rag`: a tenant's instruction (one of `tenants`, `instruction_tokens`), then uniform [`docs_min`, `docs_max`]
  distinct documents of a corpus of `documents` (`document_tokens` each, popularity Zipf(`zipf`), in the order
  drawn, so popular documents tend to come first and requests share the prefix up to their first document),
  then a unique question.
- `trace`: the requests of a JSONL trace (`traces`).
- `varied`: prompt length ~ Normal(`isl_mean`, `isl_spread`) clipped to [`isl_min`, `isl_max`]; its first
  `isl_mean / 2` tokens are one of `groups` shared prefixes, the rest unique; output uniform in
  [`osl_min`, `osl_max`].

`output` (where a generator has it) draws each request's output length from a clipped lognormal; the fixed
`output_tokens` / `answer_tokens` draw nothing, so the requests of workloads written before `output` existed are
unchanged.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass

from kvroute.bench.quality.workloads import (
    AgenticSpec,
    ArrivalPhase,
    BurstPhase,
    Fleet,
    MultiTurnSpec,
    OutputLength,
    PoissonPhase,
    RagSpec,
    RampPhase,
    SharedPrefixSpec,
    TraceSpec,
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
    fleet = Fleet.from_spec(spec.fleet)
    tokenizer = Tokenizer()
    if isinstance(generator, SharedPrefixSpec):
        requests = _shared_prefix(generator, times, rng, tokenizer)
    elif isinstance(generator, MultiTurnSpec):
        requests = _multi_turn(generator, times, rng, tokenizer)
    elif isinstance(generator, AgenticSpec):
        requests = _agentic(generator, times, rng, tokenizer)
    elif isinstance(generator, RagSpec):
        requests = _rag(generator, times, rng, tokenizer)
    elif isinstance(generator, TraceSpec):
        from kvroute.bench.quality.traces import replay  # traces builds on this module's text

        requests = replay(generator, fleet.profiles[0].max_model_len)
    else:
        requests = _varied(generator, times, rng, tokenizer)
    requests.sort(key=lambda r: r.arrival_time)
    return Workload(spec, fleet, requests)


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
        elif isinstance(phase, RampPhase):
            start = now
            duration = 2 * phase.count / (phase.start_rate + phase.end_rate)
            slope = (phase.end_rate - phase.start_rate) / duration
            for _ in range(phase.count):
                now += rng.expovariate(phase.start_rate + slope * min(now - start, duration))
                times.append(now)
        else:
            start, peak = now, phase.mean_rate * (1 + phase.amplitude)
            for _ in range(phase.count):
                while True:
                    now += rng.expovariate(peak)
                    swing = phase.amplitude * math.cos(2 * math.pi * (now - start) / phase.period_s)
                    if rng.random() * (1 + phase.amplitude) < 1 - swing:
                        break
                times.append(now)
    return times


def output_length(spec: OutputLength, rng: random.Random) -> int:
    return min(spec.max, max(spec.min, round(spec.median * math.exp(spec.sigma * rng.gauss(0.0, 1.0)))))


def extend_ids(ids: list[int], text: str, longer: str, tokenizer: Tokenizer) -> list[int]:
    """The token ids of `longer`, which starts with `text` (tokenized as `ids`): only the new tail is encoded,
    from the last whole token of `text` on (tokens are fixed 4-character chunks)."""
    keep = len(text) // CHARS_PER_TOKEN
    return ids[:keep] + tokenizer.encode(longer[keep * CHARS_PER_TOKEN :])


def _zipf_cumulative(n: int, exponent: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (k + 1) ** exponent for k in range(n)))


def _zipf_draw(cumulative: list[float], rng: random.Random) -> int:
    return bisect.bisect_right(cumulative, rng.random() * cumulative[-1])


def _given(output: OutputLength | None) -> OutputLength:
    assert output is not None  # the spec holds a fixed length or a distribution
    return output


def _shared_prefix(
    spec: SharedPrefixSpec, times: list[float], rng: random.Random, tokenizer: Tokenizer
) -> list[WorkloadRequest]:
    systems = [text(rng, spec.system_tokens) for _ in range(spec.groups)]
    system_ids = [tokenizer.encode(s) for s in systems]
    fixed = None
    if spec.users_per_group:
        fixed = [[text(rng, spec.question_tokens) for _ in range(spec.users_per_group)] for _ in systems]
    cumulative = _zipf_cumulative(spec.lora.adapters, spec.lora.zipf) if spec.lora else []
    groups = _zipf_cumulative(spec.groups, spec.group_zipf) if spec.group_zipf is not None else []
    requests = []
    for n, at in enumerate(times):
        group = _zipf_draw(groups, rng) if groups else rng.randrange(spec.groups)
        question = rng.choice(fixed[group]) if fixed else text(rng, spec.question_tokens)
        lora = None
        if cumulative:
            lora = f"adapter-{_zipf_draw(cumulative, rng)}"
        requests.append(
            WorkloadRequest(
                request_id=f"req-{n:06d}",
                arrival_time=at,
                prompt=systems[group] + question,
                prompt_token_ids=system_ids[group] + tokenizer.encode(question),
                max_tokens=spec.output_tokens or output_length(_given(spec.output), rng),
                lora_name=lora,
            )
        )
    return requests


def _multi_turn(
    spec: MultiTurnSpec, times: list[float], rng: random.Random, tokenizer: Tokenizer
) -> list[WorkloadRequest]:
    systems = [text(rng, spec.system_tokens) for _ in range(spec.system_prompts)]
    requests: list[WorkloadRequest] = []
    for session, start in enumerate(times):
        messages = [{"role": "system", "content": rng.choice(systems)}]
        at, prompt, ids = start, "", list[int]()
        for turn in range(spec.turns):
            messages.append({"role": "user", "content": text(rng, spec.user_tokens)})
            answer = spec.answer_tokens or output_length(_given(spec.output), rng)
            prompt, ids = _turn(requests, f"s{session:05d}-t{turn:02d}", at, messages, prompt, ids, answer, tokenizer)
            messages.append({"role": "assistant", "content": text(rng, answer)})
            at += rng.expovariate(1.0 / spec.think_time_s) + answer * NOMINAL_TOKEN_TIME_S
    return requests


def _turn(
    requests: list[WorkloadRequest],
    request_id: str,
    at: float,
    messages: list[dict[str, str]],
    previous: str,
    previous_ids: list[int],
    max_tokens: int,
    tokenizer: Tokenizer,
) -> tuple[str, list[int]]:
    """Append the request of one chat turn (the whole chat so far, which extends the previous turn's prompt)."""
    prompt = tokenizer.render_chat(messages)
    ids = extend_ids(previous_ids, previous, prompt, tokenizer)
    requests.append(WorkloadRequest(request_id, at, prompt, ids, max_tokens))
    return prompt, ids


def _agentic(spec: AgenticSpec, times: list[float], rng: random.Random, tokenizer: Tokenizer) -> list[WorkloadRequest]:
    systems = [text(rng, spec.system_tokens) for _ in range(spec.system_prompts)]
    requests: list[WorkloadRequest] = []
    for session, start in enumerate(times):
        messages = [
            {"role": "system", "content": rng.choice(systems)},
            {"role": "user", "content": text(rng, spec.task_tokens)},
        ]
        at, prompt, ids = start, "", list[int]()
        for turn in range(rng.randint(spec.turns_min, spec.turns_max)):
            answer = output_length(spec.output, rng)
            prompt, ids = _turn(requests, f"s{session:05d}-t{turn:02d}", at, messages, prompt, ids, answer, tokenizer)
            messages.append({"role": "assistant", "content": text(rng, answer)})
            tool = rng.randint(spec.tool_tokens_min, spec.tool_tokens_max)
            messages.append({"role": "tool", "content": text(rng, tool)})
            at += answer * NOMINAL_TOKEN_TIME_S + rng.uniform(spec.pause_min_s, spec.pause_max_s)
    return requests


def _rag(spec: RagSpec, times: list[float], rng: random.Random, tokenizer: Tokenizer) -> list[WorkloadRequest]:
    """Every segment is a whole number of tokens, so a prompt's ids are its segments' ids end to end."""
    instructions = [text(rng, spec.instruction_tokens) for _ in range(spec.tenants)]
    corpus = [text(rng, spec.document_tokens) for _ in range(spec.documents)]
    segment_ids = {segment: tokenizer.encode(segment) for segment in (*instructions, *corpus)}
    popularity = _zipf_cumulative(spec.documents, spec.zipf)
    requests = []
    for n, at in enumerate(times):
        chosen: list[int] = []
        wanted = rng.randint(spec.docs_min, spec.docs_max)
        while len(chosen) < wanted:
            document = _zipf_draw(popularity, rng)
            if document not in chosen:
                chosen.append(document)
        segments = [rng.choice(instructions), *(corpus[d] for d in chosen)]
        question = text(rng, spec.question_tokens)
        ids = [token for segment in segments for token in segment_ids[segment]] + tokenizer.encode(question)
        max_tokens = output_length(spec.output, rng)
        requests.append(WorkloadRequest(f"req-{n:06d}", at, "".join(segments) + question, ids, max_tokens))
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
