"""Scheduling latency in the worst case for prefix affinity: every endpoint holds the request's whole prefix.

Every endpoint was sent the prompt before, so the index walk keeps every candidate in its mask to the last block
and every endpoint gets a match length. Two measurements per (endpoints, prompt characters):

- `prefix score`: one `prefix-cache-scorer` score() on a fresh `CycleState`, i.e. hashing plus the index walk;
- `schedule()`: one whole scheduling cycle through the real `Scheduler`, single profile with GIE's default
  scorers (queue 2, kv-cache 2, prefix 3) and `max-score-picker`, then the same plus `no-hit-lru-scorer` and
  `active-blocks-scorer` (which shares the prompt hashes), weight 1 each.

Run: `python -m kvroute.bench.scheduling_latency [--iterations N]`. Prints p50 and p99 in microseconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from kvroute.router.framework import (
    ApiKind,
    CycleState,
    Endpoint,
    LLMRequest,
    ProfileResult,
    SchedulingProfile,
    SchedulingResult,
    Scorer,
)
from kvroute.router.framework.plugins import NoParams
from kvroute.router.plugins.handlers.single import SingleProfileHandler
from kvroute.router.plugins.pickers.max_score import MaxScorePicker
from kvroute.router.plugins.scorers.active_blocks import ActiveBlocksScorer
from kvroute.router.plugins.scorers.kv_cache_utilization import KVCacheUtilizationScorer
from kvroute.router.plugins.scorers.no_hit_lru import NoHitLRUScorer
from kvroute.router.plugins.scorers.prefix_cache import PrefixCacheScorer
from kvroute.router.plugins.scorers.queue import QueueScorer
from kvroute.router.scheduling import Scheduler

ENDPOINT_COUNTS = (64, 256)
PROMPT_CHARS = (8_000, 32_000)


def measure(run: Callable[[], object], iterations: int) -> tuple[float, float, float]:
    """p50 and p99 wall-clock and p99 CPU time of `run()`, in microseconds. The CPU time leaves out the time the
    process was preempted, which on a busy machine is most of the wall-clock tail."""
    for _ in range(max(10, iterations // 10)):
        run()
    wall: list[int] = []
    cpu: list[int] = []
    wall_clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    for _ in range(iterations):
        c0 = cpu_clock()
        w0 = wall_clock()
        run()
        w1 = wall_clock()
        cpu.append(cpu_clock() - c0)
        wall.append(w1 - w0)
    wall_cuts = statistics.quantiles(wall, n=100, method="inclusive")
    cpu_cuts = statistics.quantiles(cpu, n=100, method="inclusive")
    return wall_cuts[49] / 1000, wall_cuts[98] / 1000, cpu_cuts[98] / 1000


def bench_request(prompt: str) -> LLMRequest:
    return LLMRequest(
        request_id="bench", model="bench-model", api=ApiKind.COMPLETIONS, prompt=prompt, body={}, headers={}
    )


def warm(prefix: PrefixCacheScorer, request: LLMRequest, endpoints: Sequence[Endpoint]) -> None:
    """Record the prompt for every endpoint, as if each had served it."""
    for endpoint in endpoints:
        result = SchedulingResult({"default": ProfileResult((endpoint,))}, "default")
        prefix.pre_request(CycleState(), request, result)


def _score_fresh(prefix: PrefixCacheScorer, request: LLMRequest, endpoints: Sequence[Endpoint]) -> None:
    """One score() as the first plugin of a cycle sees it: nothing computed yet, so hashing is included."""
    prefix.score(CycleState(), request, endpoints)


def _scheduler(prefix: PrefixCacheScorer, full: bool) -> Scheduler:
    scorers: list[tuple[Scorer, float]] = [
        (QueueScorer("queue-scorer", NoParams()), 2.0),
        (KVCacheUtilizationScorer("kv-cache-utilization-scorer", NoParams()), 2.0),
        (prefix, 3.0),
    ]
    if full:
        scorers += [(NoHitLRUScorer("no-hit-lru-scorer"), 1.0), (ActiveBlocksScorer("active-blocks-scorer"), 1.0)]
    picker = MaxScorePicker("max-score-picker", rng=random.Random(0))
    profile = SchedulingProfile("default", (), tuple(scorers), picker)
    return Scheduler(SingleProfileHandler("single-profile-handler", NoParams()), {"default": profile})


Row = tuple[str, int, int, float, float, float]


def run(iterations: int) -> list[Row]:
    rng = random.Random(1)
    rows: list[Row] = []
    for n_endpoints in ENDPOINT_COUNTS:
        endpoints = [Endpoint.create(f"10.0.{i // 250}.{i % 250 + 1}", 8000) for i in range(n_endpoints)]
        for chars in PROMPT_CHARS:
            request = bench_request("".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(chars)))
            blocks = -(-chars // 64)
            for max_blocks in sorted({min(blocks, 256), blocks}):
                prefix = PrefixCacheScorer(
                    "prefix-cache-scorer", PrefixCacheScorer.Params(max_prefix_blocks_to_match=max_blocks)
                )
                warm(prefix, request, endpoints)
                score = partial(_score_fresh, prefix, request, endpoints)
                rows.append((f"prefix score, {max_blocks} blocks", n_endpoints, chars, *measure(score, iterations)))
                if max_blocks != min(blocks, 256):
                    continue
                for full in (False, True):
                    label = "schedule() +no-hit-lru +active-blocks" if full else "schedule() GIE default"
                    schedule = partial(_scheduler(prefix, full).schedule, request, endpoints)
                    rows.append((label, n_endpoints, chars, *measure(schedule, iterations)))
    return rows


def register(sub: Any) -> None:
    parser = sub.add_parser("scheduling", help="latency of one scheduling decision", description=__doc__)
    parser.add_argument("--iterations", type=int, default=2000, help="timed calls per row (default 2000)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    print(f"{'measurement':<40} {'endpoints':>9} {'chars':>7} {'p50 us':>8} {'p99 us':>8} {'p99 cpu':>8}")
    for label, n_endpoints, chars, p50, p99, cpu_p99 in run(args.iterations):
        print(f"{label:<40} {n_endpoints:>9} {chars:>7} {p50:>8.1f} {p99:>8.1f} {cpu_p99:>8.1f}")
    return 0
