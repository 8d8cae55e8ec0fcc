"""How well the discrete-event harness's models of the routers predict the real ones, on the same requests.

`kvroute bench quality` judges kvroute against re-implementations of the peers' algorithms (`kvroute.bench.
quality.policies`). After a live replay, each row that has such a model is replayed once more through its model
in the harness, on the same requests and fleet (`LiveWorkload.harness`: the same cut fleet, the same stretched
arrivals, in modelled time), and the two are compared:

| live row | model in the harness |
|---|---|
| direct (client round-robin) | round-robin: the engines' fidelity alone, no routing in question |
| kvroute | kvroute (the same recommended configuration, the same plugins) |
| sglang-router, vllm-router | sglang-cache-aware (vllm-router's `cache_aware` is the same algorithm, same defaults) |
| dynamo-kv | dynamo |

Dynamo's approximate mode has no model. Compared per row: the prefix-cache hit rate (live from the simulators'
counters), the load: the requests per server sorted from busiest to idlest, so that which server took which
prefix group does not count, as their total variation distance (half the sum of absolute differences of the
shares; 0 = the same spread, 1 = disjoint), and the busiest / mean ratio, and TTFT p90 (live at the client,
divided by the time scale, so in modelled seconds; the difference includes the HTTP path and the processes'
scheduling on the machine, which the harness does not model: `direct` against round-robin shows that part).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvroute.bench.live.replay import LiveWorkload
from kvroute.bench.quality.policies.catalog import lookup
from kvroute.bench.quality.runner import run_one

MODELS = {
    "direct": "round-robin",
    "kvroute": "kvroute",
    "sglang-router": "sglang-cache-aware",
    "vllm-router": "sglang-cache-aware",
    "dynamo-kv": "dynamo",
}


def sorted_shares(counts: list[int]) -> list[float]:
    total = sum(counts)
    return sorted((c / total for c in counts), reverse=True) if total else [0.0] * len(counts)


def spread_distance(live: list[int], model: list[int]) -> float:
    """Total variation distance between the two sorted request shares (0: the same spread)."""
    return sum(abs(a - b) for a, b in zip(sorted_shares(live), sorted_shares(model), strict=True)) / 2


def compare(workload: LiveWorkload, rows: Mapping[str, Mapping[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
    """Per live row with a model: the model's and the live numbers side by side."""
    scale = float(workload.info["live"]["time_scale"])  # type: ignore[index]
    models: dict[str, dict[str, Any]] = {}
    found: dict[str, dict[str, Any]] = {}
    for row, metrics in rows.items():
        model = MODELS.get(row)
        if model is None or metrics.get("error") is not None or metrics.get("ttft_p90_s") is None:
            continue
        if model not in models:
            models[model] = run_one(workload.harness, lookup(model), seed)
        modelled = models[model]
        live_p90 = metrics["ttft_p90_s"] / scale
        found[row] = {
            "model": model,
            "hit_rate_live": metrics["prefix_hit_rate"],
            "hit_rate_model": modelled["prefix_hit_rate"],
            "spread_distance": spread_distance(metrics["engine_requests"], modelled["engine_requests"]),
            "imbalance_live": metrics["load_imbalance"],
            "imbalance_model": modelled["load_imbalance"],
            "ttft_p90_live_s": live_p90,
            "ttft_p90_model_s": modelled["ttft_p90_s"],
            "ttft_p90_ratio": live_p90 / modelled["ttft_p90_s"] if modelled["ttft_p90_s"] else None,
        }
    return found


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown(fidelity: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """The fidelity table: one line per workload and live row with a model."""
    if not any(fidelity.values()):
        return []
    lines = [
        "## Fidelity: the harness's model of each router against the real one, same requests",
        "",
        "Load spread: total variation distance between the sorted request shares (0 = the same spread). TTFT p90 "
        "in modelled seconds (live divided by the time scale).",
        "",
        "| workload | live row | model | hit rate live / model | load spread distance | imbalance live / model "
        "| TTFT p90 live / model (s) | live / model |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for workload, rows in fidelity.items():
        for row, f in rows.items():
            lines.append(
                f"| {workload} | {row} | {f['model']} | {_pct(f['hit_rate_live'])} / {_pct(f['hit_rate_model'])} "
                f"| {f['spread_distance']:.3f} "
                f"| {_num(f['imbalance_live'], '{:.2f}')} / {_num(f['imbalance_model'], '{:.2f}')} "
                f"| {f['ttft_p90_live_s']:.3f} / {_num(f['ttft_p90_model_s'], '{:.3f}')} "
                f"| {_num(f['ttft_p90_ratio'], '{:.2f}x')} |"
            )
    return [*lines, ""]
