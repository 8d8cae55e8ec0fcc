from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kvroute.bench.tune.report import markdown, write_report


def _policy(p90: dict[str, float], objective: float) -> dict[str, Any]:
    return {
        "per_case": {
            case: {"ttft_p50_s": v / 2, "ttft_p90_s": v, "output_tokens_per_s": 1234.5} for case, v in p90.items()
        },
        "geomean": {"ttft_p50_s": 0.05, "ttft_p90_s": 0.1, "output_tokens_per_s": 1234.5},
        "vs_base": {"objective": objective, "ttft_ratio": objective, "throughput_ratio": 1.0},
    }


RESULT: dict[str, Any] = {
    "base": "recommended",
    "seed": 0,
    "trials": 2,
    "search": {
        "rungs": [
            {
                "cases": 1,
                "scores": {"trial-000": 1.0, "trial-001": 0.8, "trial-002": 1.2},
                "promoted": ["trial-000", "trial-001"],
            },
            {"cases": 2, "scores": {"trial-000": 1.0, "trial-001": 0.9}, "promoted": []},
        ],
        "winner": "trial-001",
    },
    "winner": {
        "trial": "trial-001",
        "file": "out/trials/trial-001.yaml",
        "changes": {"default/queue-scorer": [1.0, 0]},
    },
    "splits": {
        "train": {
            "cases": ["w@0", "w@1"],
            "policies": {
                "base": _policy({"w@0": 0.1, "w@1": 0.2}, 1.0),
                "trial-001": _policy({"w@0": 0.09, "w@1": 0.18}, 0.9),
            },
        },
        "holdout": {
            "cases": ["w@1000"],
            "policies": {"base": _policy({"w@1000": 0.1}, 1.0), "trial-001": _policy({"w@1000": 0.11}, 1.1)},
        },
    },
    "verdict": {"generalizes": False, "chosen": "base", "text": "no improvement that generalizes: keep the base"},
}


def test_the_verdict_comes_first_then_the_finalists_and_the_splits() -> None:
    text = markdown(RESULT)

    assert text.startswith("# kvroute tune\n\n**Verdict: no improvement that generalizes: keep the base.**\n")
    assert "| trial-001 | 0.900 | 0.800 |\n| trial-000 | 1.000 | 1.000 |" in text
    assert "| default/queue-scorer | 1.0 | 0 |" in text
    assert text.index("## Training cases (2)") < text.index("## Held-out cases (1)")
    assert "| trial-001 | 0.050 | 0.100 | 1,234 | 0.900x | 1.000x | **0.900** |" in text
    assert "| w@1000 | 0.100 | 0.110 |" in text


def test_the_printed_report_has_ttft_p90_per_case_only(tmp_path: Path) -> None:
    printed = markdown(RESULT, full=False)
    assert "| case: TTFT p90 (s) |" in printed
    assert "| case: TTFT p50 (s) |" not in printed and "| case: output tok/s |" not in printed
    assert "| case: TTFT p50 (s) |" in markdown(RESULT) and "| case: output tok/s |" in markdown(RESULT)

    json_path, md_path = write_report(RESULT, tmp_path)

    assert json.loads(json_path.read_text()) == RESULT
    assert md_path.read_text() == markdown(RESULT)
