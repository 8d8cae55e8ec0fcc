"""Scheduling latency over a grid of endpoint counts and prompt lengths, for whole configurations.

Each configuration is loaded the way the router loads it (`load_config` with the plugin registry), so the
scheduler runs exactly the plugins, weights and defaults a deployment of that document would. The setup is
`scheduling_latency`'s worst case for prefix affinity (every endpoint was sent the prompt before, so the index
walk keeps every endpoint to the last hashed block) and its timing (`measure`: wall p50/p99 and CPU p99). Every
endpoint reports fresh, idle metrics. One `schedule()` call is timed, hashing included: a fresh `CycleState` each
time, as the Director creates one per request.

The number of timed calls adapts to the cell: about `budget` seconds each, between `min_iterations` and
`max_iterations`.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from kvroute.bench.scheduling_latency import bench_request, measure, warm
from kvroute.router.config.builder import LoadedConfig
from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from kvroute.router.config.loader import load_config
from kvroute.router.config.recommended import recommended_config_text
from kvroute.router.framework import Endpoint
from kvroute.router.framework.endpoint import EndpointMetrics
from kvroute.router.plugins.registry import REGISTRY
from kvroute.router.plugins.scorers.prefix_cache import PrefixCacheScorer

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


def endpoints(count: int) -> list[Endpoint]:
    idle = EndpointMetrics(block_size=16, num_gpu_blocks=100_000, scraped_at=time.monotonic(), stale=False)
    return [
        dataclasses.replace(Endpoint.create(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 8000), metrics=idle)
        for i in range(count)
    ]


def _prefix_scorers(config: LoadedConfig) -> list[PrefixCacheScorer]:
    return [plugin for plugin in config.plugins.values() if isinstance(plugin, PrefixCacheScorer)]


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
    rng = random.Random(seed)
    longest = max(prompt_chars)
    text = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz     ", k=longest))
    cells: list[Cell] = []
    for label, document in profiles.items():
        for count in endpoint_counts:
            pool = endpoints(count)
            for chars in prompt_chars:
                # A fresh configuration per cell: the index holds this cell's prompt only.
                config = load_config(document, REGISTRY, rng=random.Random(seed))
                request = bench_request(text[:chars])
                for prefix in _prefix_scorers(config):
                    warm(prefix, request, pool)
                call = partial(config.scheduler.schedule, request, pool)
                iterations = _iterations(call, budget, min_iterations, max_iterations)
                cells.append(Cell(label, count, chars, iterations, *measure(call, iterations)))
    return cells


def default_profiles() -> dict[str, str]:
    """The router's built-in default (GIE's scorers) and kvroute's recommended configuration."""
    return {"default": DEFAULT_CONFIG_TEXT, "recommended": recommended_config_text()}
