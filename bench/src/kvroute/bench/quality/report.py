"""The results as files: `results.json` (everything), `results.md` (tables) and PNG plots (`plots`).

The JSON holds no timestamp, wall time or host detail: the same command and seed give the same bytes.

Verdicts compare kvroute with the best peer (every policy but kvroute's and the oracle) on TTFT p90:

- `win`: more than `TIE_RATIO` (5%) and more than `TIE_ABS_S` (10 ms, about one engine step) lower;
- `tie`: within 5% or within 10 ms;
- `loss`: more than 5% and more than 10 ms higher.

Per family (workloads drawn from a family, `families`): the geometric mean over the family's workloads of each
policy's TTFT p90 divided by the best peer's on that workload (1.00: as good as the best peer on every one).

Fleet runs (`NAME@N`, `NAME@N+sync`: N router replicas) are left out of the main table and the verdict; they get
a table of their own, TTFT p90 by replica count and its ratio to the single router.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KVROUTE = "kvroute"
ORACLE = "oracle"
TIE_RATIO = 0.05
TIE_ABS_S = 0.010

COLUMNS = (  # the per-workload table: (title, metric, format)
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


def is_fleet(policy: str) -> bool:
    return "@" in policy


def is_peer(policy: str) -> bool:
    """Another router's policy: not kvroute's own (any variant), not the oracle, not a fleet run."""
    return not policy.startswith(KVROUTE) and policy != ORACLE and not is_fleet(policy)


def fleet_of(policy: str) -> tuple[str, int, bool]:
    """(the single-router policy, replicas, with fleet sync) of a policy name."""
    base, _, count = policy.rpartition("@")
    if not base:
        return policy, 1, False
    sync = count.endswith("+sync")
    return base, int(count.removesuffix("+sync")), sync


def verdict(per_policy: Mapping[str, Mapping[str, Any]]) -> tuple[str, str, float] | None:
    """(win | tie | loss, best peer, kvroute p90 / best peer p90), or None without kvroute or peers."""
    if KVROUTE not in per_policy:
        return None
    peers = {p: m["ttft_p90_s"] for p, m in per_policy.items() if is_peer(p)}
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
    """The command that reproduces `results`: families as `--families --sample`, traces with their options."""
    families: dict[str, int] = {}
    items: list[str] = []
    trace: dict[str, Any] = {}
    for name, info in results["workloads"].items():
        generator = info["spec"]["generator"]
        if info.get("family"):
            families[info["family"]] = families.get(info["family"], 0) + 1
        elif generator["kind"] == "trace":
            items.append(generator["path"])
            trace = {"generator": generator, "fleet": info["spec"]["fleet"]}
        else:
            items.append(name)
    parts = ["kvroute bench quality"]
    if items or not families:
        parts.append(f"--workloads {','.join(items)}")
    if families:
        parts.append(f"--families {','.join(families)} --sample {max(families.values())}")
    if trace:
        parts.append(_trace_options(trace["generator"], trace["fleet"]))
    parts.append(f"--policies {','.join(results['policies'])} --seed {results['seed']} --out {out}")
    return " ".join(parts)


def _trace_options(generator: Mapping[str, Any], fleet: Mapping[str, Any]) -> str:
    options = [f"--speed {generator['speed']:g}"]
    if generator.get("window"):
        options.append(f"--window {generator['window'][0]:g}:{generator['window'][1]:g}")
    if generator.get("max_context"):
        options.append(f"--max-context {generator['max_context']}")
    defaults = {"prefill_engines": 0, "slow_engines": 0, "slow_factor": 1.0, "overrides": None}
    chosen = {k: v for k, v in fleet.items() if k not in defaults or v not in (defaults[k], {})}
    pairs = [f"{k}={v}" for k, v in {**chosen, **fleet["overrides"]}.items() if k != "overrides"]
    return " ".join([*options, f"--fleet {','.join(pairs)}"])


def family_table(results: Mapping[str, Any]) -> list[str]:
    """Per family and policy, the geometric mean of TTFT p90 / the best peer's TTFT p90; empty without
    families."""
    groups: dict[str, list[str]] = {}
    for name, info in results["workloads"].items():
        if info.get("family"):
            groups.setdefault(info["family"], []).append(name)
    if not groups:
        return []
    policies = [p for p in results["policies"] if not is_fleet(p)]
    lines = [
        "## Per family: TTFT p90 relative to the best peer (geometric mean)",
        "",
        "1.00: the best peer on every workload of the family; lower is better.",
        "",
        "| family | workloads | " + " | ".join(policies) + " |",
        "|---|---:|" + "---:|" * len(policies),
    ]
    for family, names in groups.items():
        ratios: dict[str, list[float]] = {p: [] for p in policies}
        for name in names:
            per_policy = results["results"][name]
            peers = [per_policy[p]["ttft_p90_s"] for p in policies if is_peer(p)]
            best = min((v for v in peers if v is not None), default=None)
            for p in policies:
                value = per_policy[p]["ttft_p90_s"]
                if best and value is not None:
                    ratios[p].append(max(value, 1e-9) / best)
        cells = [_cell(math.exp(sum(map(math.log, r)) / len(r)) if r else None, "{:.2f}") for r in ratios.values()]
        lines.append(f"| {family} | {len(names)} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines + summary(results)


def summary(results: Mapping[str, Any]) -> list[str]:
    """kvroute against the best peer over every workload: verdicts, the geometric mean of the TTFT p90 ratios,
    and the worst workload with its ratio to the oracle."""
    ratios: list[tuple[float, str]] = []
    counts = {"win": 0, "tie": 0, "loss": 0}
    for name, per_policy in results["results"].items():
        found = verdict(per_policy)
        if found is not None:
            counts[found[0]] += 1
            ratios.append((found[2], name))
    if not ratios:
        return []
    mean = math.exp(sum(math.log(max(r, 1e-9)) for r, _ in ratios) / len(ratios))
    worst, name = max(ratios)
    line = (
        f"kvroute against the best peer over {len(ratios)} workloads: {counts['win']} wins, {counts['tie']} ties, "
        f"{counts['loss']} losses; geometric mean of TTFT p90 / best peer {mean:.3f}; worst {name} at {worst:.2f}x"
    )
    oracle = results["results"][name].get(ORACLE, {}).get("ttft_p90_s")
    ours = results["results"][name][KVROUTE]["ttft_p90_s"]
    if oracle:
        line += f" ({ours / oracle:.2f}x the oracle)"
    return [line + ".", ""]


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
    policies = [p for p in results["policies"] if not is_fleet(p)]
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
    lines += family_table(results)
    lines += fleet_table(results)
    for workload, per_policy in results["results"].items():
        info = results["workloads"][workload]
        fleet = f"{info['engines']} x {info['profile']}, {info['num_gpu_blocks']:,} KV blocks each"
        if info["prefill_engines"]:
            fleet += f" ({info['prefill_engines']} prefill, {info['engines'] - info['prefill_engines']} decode)"
        if info.get("slow_engines"):
            fleet += f", {info['slow_engines']} of them {info['slow_factor']:g}x slower"
        lines += [
            f"## {workload}",
            "",
            f"{info['description']}. {fleet}; {info['requests']:,} requests, {info['prompt_tokens']:,} prompt and "
            f"{info['output_tokens']:,} output tokens, arrivals over {info['last_arrival_s']:.0f} s.",
            "",
            "| policy | " + " | ".join(title for title, _, _ in COLUMNS) + " |",
            "|---|" + "---:|" * len(COLUMNS),
        ]
        for policy, metrics in per_policy.items():
            cells = [_cell(metrics[key], fmt) for _, key, fmt in COLUMNS]
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def fleet_table(results: Mapping[str, Any]) -> list[str]:
    """TTFT p90 by replica count, per workload and policy (with and without fleet sync); empty without fleets."""
    names = list(results["policies"])
    if not any(is_fleet(p) for p in names):
        return []
    counts = sorted({fleet_of(p)[1] for p in names})
    rows: list[tuple[str, bool]] = []
    for p in names:
        base, _, sync = fleet_of(p)
        if (base, sync) not in rows:
            rows.append((base, sync))
    lines = [
        "## Router fleet: TTFT p90 (s) by replicas",
        "",
        "N replicas each route 1/N of the requests; in parentheses the ratio to one router. `+sync`: the replicas "
        "share their decisions (fleet sync).",
        "",
        "| workload | policy | " + " | ".join(f"N={n}" for n in counts) + " |",
        "|---|---|" + "---:|" * len(counts),
    ]
    for workload, per_policy in results["results"].items():
        for base, sync in rows:
            single = per_policy.get(base, {}).get("ttft_p90_s")
            cells = []
            for n in counts:
                name = base if n == 1 else f"{base}@{n}" + ("+sync" if sync else "")
                value = per_policy.get(name, {}).get("ttft_p90_s")
                text = _cell(value, "{:.3f}")
                if n > 1 and value is not None and single:
                    text += f" ({value / single:.2f}x)"
                cells.append(text)
            label = base + (" +sync" if sync else "")
            lines.append(f"| {workload} | {label} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


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
