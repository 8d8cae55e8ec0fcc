from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvroute.bench.quality.policies.catalog import select
from kvroute.bench.quality.report import command, verdict, write_all
from kvroute.bench.quality.runner import run
from kvroute.bench.quality.workloads import WorkloadSpec


def p90(**values: float) -> dict[str, dict[str, Any]]:
    return {name.replace("_", "-"): {"ttft_p90_s": value} for name, value in values.items()}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (p90(kvroute=1.0, random=2.0, oracle=0.1), ("win", "random", 0.5)),
        (p90(kvroute=1.04, random=2.0, round_robin=1.0), ("tie", "round-robin", 1.04)),
        (p90(kvroute=0.030, random=0.022), ("tie", "random", 0.030 / 0.022)),  # 8 ms apart: within a step
        (p90(kvroute=1.2, random=1.0), ("loss", "random", 1.2)),
    ],
)
def test_verdicts_against_the_best_peer(values: dict[str, dict[str, Any]], expected: tuple[str, str, float]) -> None:
    found = verdict(values)
    assert found is not None
    assert found[:2] == expected[:2] and found[2] == pytest.approx(expected[2])


def test_no_verdict_without_kvroute_or_peers() -> None:
    assert verdict(p90(random=1.0)) is None
    assert verdict(p90(kvroute=1.0, oracle=0.5)) is None


def test_report_files_table_and_plots(tmp_path: Path, tiny_spec: WorkloadSpec) -> None:
    results = run([tiny_spec], select("round-robin,dynamo,kvroute"), seed=0)
    written = write_all(results, tmp_path)
    assert [p.name for p in written] == [
        "results.json",
        "results.md",
        "ttft.png",
        "e2e.png",
        "throughput.png",
        "prefix_hit_rate.png",
        "load.png",
    ]
    for path in written[2:]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "results.md").read_text()
    assert command(results, str(tmp_path)) in text
    assert (
        command(results, "out")
        == "kvroute bench quality --workloads tiny --policies round-robin,dynamo,kvroute --seed 0 --out out"
    )
    assert "| workload | round-robin | dynamo | kvroute | kvroute vs best peer |" in text
    row = next(line for line in text.splitlines() if line.startswith("| tiny |"))
    assert row.endswith(("x round-robin) |", "x dynamo) |"))
    assert "## tiny" in text and "| kvroute | " in text
