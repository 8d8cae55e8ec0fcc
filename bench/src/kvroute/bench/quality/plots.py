"""PNG plots of the results: one figure per measure, one panel per workload, one bar (or group) per policy.

- `ttft.png`: TTFT p50 / p90 / p99 (log scale); `e2e.png`: end-to-end p50 / p90 (log scale);
- `throughput.png`: output tokens/s; `prefix_hit_rate.png`: share of prompt tokens served from cache;
- `load.png`: requests per engine divided by the mean of its pool, one dot per engine (1.0 = perfectly even).

matplotlib is imported here only, with the non-interactive Agg backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): the backend must be chosen first
from matplotlib.axes import Axes

from kvroute.bench.quality.report import is_fleet

_METADATA = {"Software": None}  # no matplotlib version in the file


def _grid(count: int) -> tuple[Any, list[Axes]]:
    columns = min(4, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return figure, flat[:count]


def _bars(results: Mapping[str, Any], keys: Sequence[tuple[str, str]], title: str, path: Path, *, log: bool) -> Path:
    workloads = list(results["results"])
    policies = [p for p in results["policies"] if not is_fleet(p)]
    figure, axes = _grid(len(workloads))
    width = 0.8 / len(keys)
    for ax, workload in zip(axes, workloads, strict=True):
        per_policy = results["results"][workload]
        for k, (label, key) in enumerate(keys):
            values = [per_policy[p][key] or 0.0 for p in policies]
            positions = [i + (k - (len(keys) - 1) / 2) * width for i in range(len(policies))]
            ax.bar(positions, values, width, label=label)
        ax.set_title(workload, fontsize=10)
        ax.set_xticks(range(len(policies)), policies, rotation=60, ha="right", fontsize=7)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    if len(keys) > 1:
        axes[0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90, metadata=_METADATA)
    plt.close(figure)
    return path


def _load(results: Mapping[str, Any], path: Path) -> Path:
    workloads = list(results["results"])
    policies = [p for p in results["policies"] if not is_fleet(p)]
    figure, axes = _grid(len(workloads))
    for ax, workload in zip(axes, workloads, strict=True):
        roles = results["workloads"][workload]["spec"]["fleet"]
        prefill = roles["prefill_engines"]
        for i, policy in enumerate(policies):
            counts = results["results"][workload][policy]["engine_requests"]
            for pool in (counts[:prefill], counts[prefill:]):
                mean = sum(pool) / len(pool) if pool else 0
                if mean:
                    ax.scatter([i] * len(pool), [c / mean for c in pool], s=10, alpha=0.6, color="tab:blue")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_title(workload, fontsize=10)
        ax.set_xticks(range(len(policies)), policies, rotation=60, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle("Requests per engine / pool mean (one dot per engine)")
    figure.tight_layout()
    figure.savefig(path, dpi=90, metadata=_METADATA)
    plt.close(figure)
    return path


def write_plots(results: Mapping[str, Any], out: Path) -> list[Path]:
    ttft = (("p50", "ttft_p50_s"), ("p90", "ttft_p90_s"), ("p99", "ttft_p99_s"))
    e2e = (("p50", "e2e_p50_s"), ("p90", "e2e_p90_s"))
    return [
        _bars(results, ttft, "Time to first token (s, log scale)", out / "ttft.png", log=True),
        _bars(results, e2e, "End-to-end latency (s, log scale)", out / "e2e.png", log=True),
        _bars(results, (("", "output_tokens_per_s"),), "Output tokens/s", out / "throughput.png", log=False),
        _bars(results, (("", "prefix_hit_rate"),), "Prefix-cache hit rate", out / "prefix_hit_rate.png", log=False),
        _load(results, out / "load.png"),
    ]
