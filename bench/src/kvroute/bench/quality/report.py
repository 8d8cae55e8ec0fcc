"""The results as files: `results.json` (everything), `results.md` (tables) and PNG plots (`plots`).

The JSON holds no timestamp, wall time or host detail: the same command and seed give the same bytes.

Verdicts compare kvroute with the best peer (every policy but kvroute and the oracle) on TTFT p90:

- `win`: more than `TIE_RATIO` (5%) and more than `TIE_ABS_S` (10 ms, about one engine step) lower;
- `tie`: within 5% or within 10 ms;
- `loss`: more than 5% and more than 10 ms higher.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KVROUTE = "kvroute"
ORACLE = "oracle"
TIE_RATIO = 0.05
TIE_ABS_S = 0.010

_COLUMNS = (
    ("TTFT p50 s", "ttft_p50_s", "{:.3f}"),
    ("TTFT p90 s", "ttft_p90_s", "{:.3f}"),
    ("TTFT p99 s", "ttft_p99_s", "{:.3f}"),
    ("e2e p50 s", "e2e_p50_s", "{:.2f}"),
    ("e2e p90 s", "e2e_p90_s", "{:.2f}"),
    ("out tok/s", "output_tokens_per_s", "{:.0f}"),
    ("prefix hit", "prefix_hit_rate", "{:.1%}"),
    ("imbalance", "load_imbalance", "{:.2f}"),
    ("preempt", "preemptions", "{}"),
)


def write_json(results: Mapping[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def verdict(per_policy: Mapping[str, Mapping[str, Any]]) -> tuple[str, str, float] | None:
    """(win | tie | loss, best peer, kvroute p90 / best peer p90), or None without kvroute or peers."""
    if KVROUTE not in per_policy:
        return None
    peers = {p: m["ttft_p90_s"] for p, m in per_policy.items() if p not in (KVROUTE, ORACLE)}
    peers = {p: v for p, v in peers.items() if v is not None}
    ours = per_policy[KVROUTE]["ttft_p90_s"]
    if not peers or ours is None:
        return None
    best = min(peers, key=lambda p: (peers[p], p))
    theirs = peers[best]
    ratio = ours / theirs if theirs > 0 else 1.0
    difference = ours - theirs
    if abs(difference) <= TIE_ABS_S or abs(ratio - 1) <= TIE_RATIO:
        return "tie", best, ratio
    return ("win" if difference < 0 else "loss"), best, ratio


def command(results: Mapping[str, Any], out: str) -> str:
    workloads = ",".join(results["workloads"])
    policies = ",".join(results["policies"])
    return f"kvroute bench quality --workloads {workloads} --policies {policies} --seed {results['seed']} --out {out}"


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown(results: Mapping[str, Any], out: str) -> str:
    lines = [
        "# Routing quality: kvroute and its peers on the discrete-event harness",
        "",
        f"Seed {results['seed']}. Reproduce with:",
        "",
        "```sh",
        command(results, out),
        "```",
        "",
        "## TTFT p90 (s) by workload and policy",
        "",
    ]
    policies = list(results["policies"])
    with_verdict = KVROUTE in policies
    header = ["workload", *policies] + (["kvroute vs best peer"] if with_verdict else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for workload, per_policy in results["results"].items():
        values = {p: per_policy[p]["ttft_p90_s"] for p in policies}
        finite = [v for p, v in values.items() if v is not None and p != ORACLE]
        best = min(finite) if finite else None
        cells = [workload]
        for p in policies:
            text = _cell(values[p], "{:.3f}")
            cells.append(f"**{text}**" if values[p] is not None and values[p] == best else text)
        if with_verdict:
            found = verdict(per_policy)
            cells.append("-" if found is None else f"{found[0]} ({found[2]:.2f}x {found[1]})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bold: the lowest TTFT p90 apart from the oracle.", ""]
    for workload, per_policy in results["results"].items():
        info = results["workloads"][workload]
        fleet = f"{info['engines']} x {info['profile']}, {info['num_gpu_blocks']:,} KV blocks each"
        if info["prefill_engines"]:
            fleet += f" ({info['prefill_engines']} prefill, {info['engines'] - info['prefill_engines']} decode)"
        lines += [
            f"## {workload}",
            "",
            f"{info['description']}. {fleet}; {info['requests']:,} requests, {info['prompt_tokens']:,} prompt and "
            f"{info['output_tokens']:,} output tokens, arrivals over {info['last_arrival_s']:.0f} s.",
            "",
            "| policy | " + " | ".join(title for title, _, _ in _COLUMNS) + " |",
            "|---|" + "---:|" * len(_COLUMNS),
        ]
        for policy, metrics in per_policy.items():
            cells = [_cell(metrics[key], fmt) for _, key, fmt in _COLUMNS]
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_all(results: Mapping[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    """results.json, results.md and (with `plots`) the PNGs, in `out`; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.md"]
    write_json(results, written[0])
    written[1].write_text(markdown(results, str(out)))
    if plots:
        from kvroute.bench.quality.plots import write_plots

        written += write_plots(results, out)
    return written
