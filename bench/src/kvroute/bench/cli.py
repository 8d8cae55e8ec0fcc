"""`kvroute bench ...`: the benchmark suite's sub-commands.

Each benchmark module provides `register(subparsers)`; it is imported only when `kvroute bench` runs.
"""

from __future__ import annotations

import importlib
from typing import Any

BENCHMARKS = (
    "kvroute.bench.scheduling_latency",
    "kvroute.bench.quality.cli",
    "kvroute.bench.live.cli",
    "kvroute.bench.overhead.cli",
    "kvroute.bench.extproc",
    "kvroute.bench.overload.cli",
)


def register(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks: routing quality, live side by side, overhead")
    commands = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    for module in BENCHMARKS:
        importlib.import_module(module).register(commands)
