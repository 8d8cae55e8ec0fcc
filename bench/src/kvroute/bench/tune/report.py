"""The report of a tuning run: `report.json` (the tuner's result as is) and `report.md`, also printed.

Per split (training cases, held-out cases) a summary table compares every policy with the base: geometric means
of TTFT p50 / p90 and output throughput over the cases, their ratios to the base and the search's objective; then
per-case tables of TTFT p90 (and, in the file, TTFT p50 and output throughput). The verdict comes first: the
winner of the training cases is recommended only when it also beats the base on the held-out cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPLITS = (("train", "Training cases"), ("holdout", "Held-out cases"))
PER_CASE = (("ttft_p90_s", "TTFT p90 (s)"), ("ttft_p50_s", "TTFT p50 (s)"), ("output_tokens_per_s", "output tok/s"))


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _summary(split: dict[str, Any]) -> list[str]:
    rows = []
    for name, policy in split["policies"].items():
        means, versus = policy["geomean"], policy["vs_base"]
        rows.append(
            [
                name,
                _number(means["ttft_p50_s"]),
                _number(means["ttft_p90_s"]),
                _number(means["output_tokens_per_s"]),
                f"{versus['ttft_ratio']:.3f}x",
                f"{versus['throughput_ratio']:.3f}x",
                f"**{versus['objective']:.3f}**",
            ]
        )
    header = ["policy", "TTFT p50 (s)", "TTFT p90 (s)", "output tok/s", "p90 vs base", "tok/s vs base", "objective"]
    return _table(header, rows)


def _per_case(split: dict[str, Any], key: str, title: str) -> list[str]:
    names = list(split["policies"])
    rows = [[case, *(_number(split["policies"][n]["per_case"][case][key]) for n in names)] for case in split["cases"]]
    return _table([f"case: {title}", *names], rows)


def _finalists(search: dict[str, Any]) -> list[str]:
    """The candidates of the last rung, best first, with their score on the first rung's cases."""
    first, last = search["rungs"][0], search["rungs"][-1]
    ranked = sorted(last["scores"], key=lambda name: (last["scores"][name], name))
    plural = "s" if last["cases"] != 1 else ""
    header = ["trial", f"objective on {last['cases']} training case{plural}"]
    if len(search["rungs"]) > 1:
        header.append(f"on the first {first['cases']}")
    rows = [[name, f"{last['scores'][name]:.3f}", f"{first['scores'][name]:.3f}"][: len(header)] for name in ranked]
    return _table(header, rows)


def markdown(result: dict[str, Any], *, full: bool = True) -> str:
    winner = result["winner"]
    lines = ["# kvroute tune", "", f"**Verdict: {result['verdict']['text']}.**", ""]
    search = result["search"]
    candidates = len(search["rungs"][0]["scores"])
    sizes = " -> ".join(f"{len(r['scores'])} on {r['cases']}" for r in search["rungs"])
    lines += [
        f"Base: {result['base']}; {result['trials']} trials besides the base (seed {result['seed']}); "
        f"{candidates} configurations searched by successive halving (candidates on training cases: {sizes}). "
        "Objective: geometric mean over the cases of TTFT p90 relative to the base, with a penalty for output "
        "throughput lost beyond 3%; lower is better, the base is 1.",
        "",
    ]
    lines += ["The candidates that ran on every training case, best first:", "", *_finalists(search), ""]
    if winner["changes"]:
        rows = [[name, str(base), str(value)] for name, (base, value) in winner["changes"].items()]
        lines += [f"Winner on the training cases: {winner['trial']} ({winner['file']}):", ""]
        lines += [*_table(["dimension", "base", winner["trial"]], rows), ""]
    for key, title in SPLITS:
        split = result["splits"][key]
        lines += [f"## {title} ({len(split['cases'])})", "", *_summary(split), ""]
        for metric, label in PER_CASE if full else PER_CASE[:1]:
            lines += [*_per_case(split, metric, label), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(result: dict[str, Any], out: Path) -> list[Path]:
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    md_path.write_text(markdown(result))
    return [json_path, md_path]
