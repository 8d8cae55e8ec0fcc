"""Scheduling latency over a grid of endpoint counts and prompt lengths, for whole configurations.

Each configuration is loaded the way the router loads it (`load_config` with the plugin registry), so the
scheduler runs exactly the plugins, weights and defaults a deployment of that document would. The setup is the
worst case for prefix affinity: every endpoint was sent the prompt before (`warm`, for every approximate prefix
cache of the configuration, scorer or producer), so the index walk keeps every endpoint to the last hashed block
and every endpoint gets a match length. Every endpoint reports fresh, idle metrics. One `schedule()` call is
timed, hashing included: a fresh `CycleState` each time, as the Director creates one per request.

`measure` gives wall-clock p50 and p99 and CPU-time p99 in microseconds; the CPU time leaves out the time the
process was preempted, which on a busy machine is most of the wall-clock tail. The number of timed calls adapts
to the cell: about `budget` seconds each, between `min_iterations` and `max_iterations`.

`kvroute bench overhead` runs the whole grid for the built-in default and the recommended configuration;
`kvroute bench scheduling` (`scheduling_latency`) chosen cells and configurations, beside the prefix scorer alone.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from kvroute.router.config.builder import LoadedConfig
from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from kvroute.router.config.loader import load_config
from kvroute.router.config.recommended import recommended_config_text
from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest, ProfileResult, SchedulingResult
from kvroute.router.framework.endpoint import EndpointMetrics
from kvroute.router.plugins.prefix.approx import ApproxPrefixCache
from kvroute.router.plugins.registry import REGISTRY

ENDPOINT_COUNTS = (16, 64, 256, 1024)
PROMPT_CHARS = (1_000, 8_000, 32_000, 128_000)


@dataclass(frozen=True)
class Cell:
    profile: str
    endpoints: int
    chars: int
    iterations: int
    p50_us: float
    p99_us: float
    cpu_p99_us: float


def measure(run: Callable[[], object], iterations: int) -> tuple[float, float, float]:
    """p50 and p99 wall-clock and p99 CPU time of `run()`, in microseconds, after `iterations // 10` (at least 10)
    untimed calls."""
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


def prompt_text(chars: int, seed: int = 1) -> str:
    """A prompt of `chars` random lowercase words; the prompt of a seed is a prefix of the seed's longer ones."""
    return "".join(random.Random(seed).choices("abcdefghijklmnopqrstuvwxyz     ", k=chars))


def bench_request(prompt: str) -> LLMRequest:
    return LLMRequest(
        request_id="bench", model="bench-model", api=ApiKind.COMPLETIONS, prompt=prompt, body={}, headers={}
    )


def endpoints(count: int) -> list[Endpoint]:
    idle = EndpointMetrics(block_size=16, num_gpu_blocks=100_000, scraped_at=time.monotonic(), stale=False)
    return [
        dataclasses.replace(Endpoint.create(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 8000), metrics=idle)
        for i in range(count)
    ]


def warm(cache: ApproxPrefixCache, request: LLMRequest, pool: Sequence[Endpoint]) -> None:
    """Record the prompt for every endpoint, as if each had served it."""
    for endpoint in pool:
        result = SchedulingResult({"default": ProfileResult((endpoint,))}, "default")
        cache.pre_request(CycleState(), request, result)


def prepared(document: str, request: LLMRequest, pool: Sequence[Endpoint], seed: int = 1) -> LoadedConfig:
    """The configuration loaded as the router loads it, every endpoint of `pool` having been sent `request`."""
    config = load_config(document, REGISTRY, rng=random.Random(seed))
    for plugin in config.plugins.values():
        if isinstance(plugin, ApproxPrefixCache):
            warm(plugin, request, pool)
    return config


def _iterations(call: Callable[[], object], budget: float, low: int, high: int) -> int:
    started = time.perf_counter()
    for _ in range(3):
        call()
    per_call = (time.perf_counter() - started) / 3
    return max(low, min(high, int(budget / max(per_call, 1e-9))))


def run_grid(
    profiles: dict[str, str],
    endpoint_counts: Sequence[int] = ENDPOINT_COUNTS,
    prompt_chars: Sequence[int] = PROMPT_CHARS,
    *,
    budget: float = 1.0,
    min_iterations: int = 30,
    max_iterations: int = 2000,
    seed: int = 1,
) -> list[Cell]:
    """`profiles` maps a label to an EndpointPickerConfig document; one cell per (profile, endpoints, chars)."""
    text = prompt_text(max(prompt_chars), seed)
    cells: list[Cell] = []
    for label, document in profiles.items():
        for count in endpoint_counts:
            pool = endpoints(count)
            for chars in prompt_chars:
                # A fresh configuration per cell: the index holds this cell's prompt only.
                request = bench_request(text[:chars])
                config = prepared(document, request, pool, seed)
                call = partial(config.scheduler.schedule, request, pool)
                iterations = _iterations(call, budget, min_iterations, max_iterations)
                cells.append(Cell(label, count, chars, iterations, *measure(call, iterations)))
    return cells


def default_profiles() -> dict[str, str]:
    """The router's built-in default (GIE's scorers) and kvroute's recommended configuration."""
    return {"default": DEFAULT_CONFIG_TEXT, "recommended": recommended_config_text()}
