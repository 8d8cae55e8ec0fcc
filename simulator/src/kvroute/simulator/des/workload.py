"""Synthetic workloads for the harness, tokenized once per shared segment.

`shared_prefix`: `groups` system prompts of `system_tokens` tokens each; every request is one group's system
prompt followed by a unique question of `question_tokens` tokens, asking for `output_tokens` tokens; arrivals
are a Poisson process of `rate` requests per second, groups chosen uniformly. All text is generated from the
seed, so the same arguments always give the same workload.
"""

from __future__ import annotations

import random
import string

from kvroute.simulator.des.harness import WorkloadRequest
from kvroute.simulator.tokenizer import CHARS_PER_TOKEN, Tokenizer

_ALPHABET = string.ascii_lowercase + "     "


def random_text(rng: random.Random, tokens: int) -> str:
    return "".join(rng.choices(_ALPHABET, k=tokens * CHARS_PER_TOKEN))


def shared_prefix(
    *,
    num_requests: int,
    groups: int,
    system_tokens: int,
    question_tokens: int,
    output_tokens: int,
    rate: float,
    seed: int = 0,
) -> list[WorkloadRequest]:
    if num_requests < 0 or groups < 1 or rate <= 0:
        raise ValueError("need num_requests >= 0, groups >= 1 and rate > 0")
    rng = random.Random(seed)
    tokenizer = Tokenizer()
    # System prompts are a whole number of tokens long, so tokenizing the parts equals tokenizing the whole.
    systems = [random_text(rng, system_tokens) for _ in range(groups)]
    system_ids = [tokenizer.encode(text) for text in systems]
    requests: list[WorkloadRequest] = []
    now = 0.0
    for n in range(num_requests):
        now += rng.expovariate(rate)
        group = rng.randrange(groups)
        question = random_text(rng, question_tokens)
        requests.append(
            WorkloadRequest(
                request_id=f"req-{n}",
                arrival_time=now,
                prompt=systems[group] + question,
                prompt_token_ids=system_ids[group] + tokenizer.encode(question),
                max_tokens=output_tokens,
            )
        )
    return requests
