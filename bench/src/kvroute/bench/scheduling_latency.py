"""`kvroute bench scheduling`: the latency of one scheduling decision, in the worst case for prefix affinity.

Every endpoint was sent the prompt before, so the index walk keeps every candidate in its mask to the last block
and every endpoint gets a match length; every endpoint reports fresh, idle metrics. Per endpoint count and prompt
length (`--endpoints`, `--chars`):

- `prefix score, N blocks`: one `prefix-cache-scorer` score() on a fresh `CycleState`, i.e. hashing plus the
  index walk, at most 256 blocks of 64 characters and, for longer prompts, every block;
- `schedule() <configuration>`: one whole scheduling cycle of a configuration (`--config`) loaded through the
  router's own config loader, on a fresh `CycleState` as the Director creates one per request, so hashing is
  included (`overhead.scheduling.run_grid`):
  - `default`: the router's built-in default, GIE's scorers (queue 2, kv-cache 2, prefix 3) and
    `max-score-picker`;
  - `default+no-hit-lru+active-blocks`: the same plus `no-hit-lru-scorer` and `active-blocks-scorer` (which
    shares the prompt hashes), weight 1 each;
  - `recommended`: kvroute's recommended configuration (`approx-prefix-cache-producer` with 64-token blocks,
    `predicted-latency-scorer`, `no-hit-lru-scorer`, `lora-affinity-scorer`, `max-score-picker` returning 3).

Run: `kvroute bench scheduling [--endpoints 64,256] [--chars 8000,32000] [--config NAME,...] [--iterations N]`,
e.g. `kvroute bench scheduling --endpoints 256 --chars 32000 --config recommended`. Prints wall-clock p50 and p99
and CPU-time p99 in microseconds (`overhead.scheduling.measure`).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

from kvroute.bench.live.cli import names, positive
from kvroute.bench.overhead.cli import _counts as counts
from kvroute.bench.overhead.scheduling import (
    bench_request,
    default_profiles,
    endpoints,
    measure,
    prompt_text,
    run_grid,
    warm,
)
from kvroute.router.framework import CycleState, Endpoint, LLMRequest
from kvroute.router.plugins.scorers.prefix_cache import PrefixCacheScorer

ENDPOINT_COUNTS = (64, 256)
PROMPT_CHARS = (8_000, 32_000)
PREFIX_BLOCK_CHARS = 64  # prefix-cache-scorer's default: 16 tokens of 4 characters
PREFIX_MAX_BLOCKS = 256  # and its default maxPrefixBlocksToMatch

# The built-in default plus no-hit-lru-scorer and active-blocks-scorer, weight 1 each.
DEFAULT_PLUS_TEXT = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: queue-scorer
  - type: kv-cache-utilization-scorer
  - type: prefix-cache-scorer
  - type: no-hit-lru-scorer
  - type: active-blocks-scorer
  - type: max-score-picker
    parameters: {maxNumOfEndpoints: 3}
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: queue-scorer, weight: 2}
      - {pluginRef: kv-cache-utilization-scorer, weight: 2}
      - {pluginRef: prefix-cache-scorer, weight: 3}
      - {pluginRef: no-hit-lru-scorer, weight: 1}
      - {pluginRef: active-blocks-scorer, weight: 1}
      - {pluginRef: max-score-picker}
"""

CONFIGURATIONS = ("default", "default+no-hit-lru+active-blocks", "recommended")

Row = tuple[str, int, int, float, float, float]


def configurations() -> dict[str, str]:
    """The documents `--config` chooses among, by name."""
    profiles = default_profiles()
    return {
        "default": profiles["default"],
        "default+no-hit-lru+active-blocks": DEFAULT_PLUS_TEXT,
        "recommended": profiles["recommended"],
    }


def _score_fresh(prefix: PrefixCacheScorer, request: LLMRequest, pool: Sequence[Endpoint]) -> None:
    """One score() as the first plugin of a cycle sees it: nothing computed yet, so hashing is included."""
    prefix.score(CycleState(), request, pool)


def _prefix_rows(count: int, chars: int, iterations: int) -> list[Row]:
    pool = endpoints(count)
    request = bench_request(prompt_text(chars))
    blocks = -(-chars // PREFIX_BLOCK_CHARS)
    rows: list[Row] = []
    for max_blocks in sorted({min(blocks, PREFIX_MAX_BLOCKS), blocks}):
        prefix = PrefixCacheScorer(
            "prefix-cache-scorer", PrefixCacheScorer.Params(max_prefix_blocks_to_match=max_blocks)
        )
        warm(prefix, request, pool)
        score = partial(_score_fresh, prefix, request, pool)
        rows.append((f"prefix score, {max_blocks} blocks", count, chars, *measure(score, iterations)))
    return rows


def run(
    endpoint_counts: Sequence[int] = ENDPOINT_COUNTS,
    prompt_chars: Sequence[int] = PROMPT_CHARS,
    configs: Sequence[str] = CONFIGURATIONS,
    iterations: int = 2000,
) -> Iterator[Row]:
    """The rows of every (endpoints, chars), as they are measured: the prefix scorer's, then one per configuration
    of `configs`."""
    documents = configurations()
    chosen = {name: documents[name] for name in configs}
    for count in endpoint_counts:
        for chars in prompt_chars:
            yield from _prefix_rows(count, chars, iterations)
            for c in run_grid(
                chosen, (count,), (chars,), budget=0.0, min_iterations=iterations, max_iterations=iterations
            ):
                yield (f"schedule() {c.profile}", count, chars, c.p50_us, c.p99_us, c.cpu_p99_us)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "scheduling",
        help="latency of one scheduling decision",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--endpoints", type=counts, default=ENDPOINT_COUNTS, help="endpoint counts, comma-separated (default 64,256)")
    add("--chars", type=counts, default=PROMPT_CHARS, help="prompt characters, comma-separated (default 8000,32000)")
    add(
        "--config",
        type=names(CONFIGURATIONS),
        default=CONFIGURATIONS,
        help=f"configurations to schedule with (default {','.join(CONFIGURATIONS)})",
    )
    add("--iterations", type=positive(int), default=2000, help="timed calls per row (default 2000)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    print(f"{'measurement':<46} {'endpoints':>9} {'chars':>7} {'p50 us':>8} {'p99 us':>8} {'p99 cpu':>8}")
    for label, n_endpoints, chars, p50, p99, cpu_p99 in run(args.endpoints, args.chars, args.config, args.iterations):
        print(f"{label:<46} {n_endpoints:>9} {chars:>7} {p50:>8.1f} {p99:>8.1f} {cpu_p99:>8.1f}", flush=True)
    return 0
