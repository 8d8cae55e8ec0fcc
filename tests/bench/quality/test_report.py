from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvroute.bench.quality.policies.catalog import select
from kvroute.bench.quality.report import command, family_table, summary, verdict, write_all
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


def test_the_family_table_is_the_geometric_mean_of_ratios_to_the_best_peer() -> None:
    def info(family: str | None) -> dict[str, Any]:
        return {"family": family, "spec": {"generator": {"kind": "shared-prefix"}}}

    results = {
        "seed": 0,
        "policies": {"random": "", "dynamo": "", "oracle": "", "kvroute": ""},
        "workloads": {"a-s0-0": info("a"), "a-s0-1": info("a"), "other": info(None)},
        "results": {
            "a-s0-0": p90(random=2.0, dynamo=1.0, oracle=0.5, kvroute=0.5),
            "a-s0-1": p90(random=1.0, dynamo=4.0, oracle=0.5, kvroute=2.0),
            "other": p90(random=1.0, dynamo=1.0, oracle=1.0, kvroute=1.0),
        },
    }
    table = family_table(results)
    # random: sqrt(2 x 1) = 1.41; dynamo: sqrt(1 x 4) = 2; oracle: sqrt(0.5 x 0.5) = 0.5; kvroute: sqrt(0.5 x 2) = 1
    assert "| a | 2 | 1.41 | 2.00 | 0.50 | 1.00 |" in table
    assert not any(line.startswith("| other") for line in table)
    assert command(results, "o") == (
        "kvroute bench quality --workloads other --families a --sample 2 --policies random,dynamo,oracle,kvroute "
        "--seed 0 --out o"
    )


def test_the_summary_counts_verdicts_and_names_the_worst_workload_against_the_oracle() -> None:
    results = {
        "results": {
            "a": p90(random=2.0, oracle=0.5, kvroute=0.5),  # win, 0.25x
            "b": p90(random=1.0, oracle=1.0, kvroute=1.02),  # tie, 1.02x
            "c": p90(random=1.0, oracle=1.0, kvroute=1.5),  # loss, 1.5x, 1.5x the oracle
        },
    }
    (line, _) = summary(results)
    # geometric mean (0.25 x 1.02 x 1.5) ** (1/3) = 0.7262
    assert line == (
        "kvroute against the best peer over 3 workloads: 1 wins, 1 ties, 1 losses; geometric mean of TTFT p90 / "
        "best peer 0.726; worst c at 1.50x (1.50x the oracle)."
    )
    assert summary({"results": {"a": p90(oracle=1.0, kvroute=1.0)}}) == []
