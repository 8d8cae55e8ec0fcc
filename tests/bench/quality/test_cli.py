from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvroute.cli import main

TINY_FAMILY = """\
name: tiny-family
utilisation: [0.5, 0.8]
fleet: {engines: [2, 3], profiles: [tiny], kv_coverage: [1.2, 2.0]}
arrival: [{process: poisson, rate: 1.0, count: [30, 40]}]
generator: {kind: shared-prefix, groups: [2, 4], system_tokens: [100, 160], question_tokens: [8, 16],
            output: {median: [4, 8], sigma: [0.2, 0.5], min: 2, max: 16}}
"""


def test_the_command_writes_the_report_and_prints_the_table(
    tmp_path: Path, tiny_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["bench", "quality", "--workloads", str(tiny_file), "--policies", "round-robin,kvroute", "--seed", "2"]
    assert main([*argv, "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr()
    assert "| workload | round-robin | kvroute | kvroute vs best peer |" in printed.out
    assert f"wrote {out / 'results.json'}" in printed.out
    assert "run" in printed.err  # the progress bar
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 2 and list(results["results"]["tiny"]) == ["round-robin", "kvroute"]
    assert not list(out.glob("*.png"))


@pytest.mark.parametrize(
    ("option", "message"),
    [(("--workloads", "nope"), "unknown workload 'nope'"), (("--policies", "nope"), "unknown policy 'nope'")],
)
def test_bad_selections_exit_2_with_a_message(
    tmp_path: Path, option: tuple[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "quality", *option, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_families_with_a_tiny_sample_and_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    families = tmp_path / "families"
    families.mkdir()
    (families / "tiny-family.yaml").write_text(TINY_FAMILY)
    trace = tmp_path / "mini.jsonl"
    trace.write_text(
        "".join(
            json.dumps({"timestamp": 100 * k, "input_length": 600, "output_length": 4, "hash_ids": [k % 2, k]}) + "\n"
            for k in range(20)
        )
    )
    out = tmp_path / "out"
    argv = ["bench", "quality", "--families", "all", "--families-dir", str(families), "--sample", "2"]
    argv += ["--workloads", str(trace), "--speed", "2", "--fleet", "engines=2,profile=tiny", "--seed", "5"]
    assert main([*argv, "--policies", "round-robin,oracle", "--out", str(out), "--no-plots", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["results"]) == ["mini", "tiny-family-s5-0", "tiny-family-s5-1"]
    assert results["workloads"]["tiny-family-s5-1"]["family"] == "tiny-family"
    assert results["workloads"]["mini"]["requests"] == 20 and results["workloads"]["mini"]["last_arrival_s"] == 0.95
    text = (out / "results.md").read_text()
    assert "| tiny-family | 2 | " in text  # the per-family table
    assert f"--workloads {trace} --families tiny-family --sample 2 --speed 2 --fleet engines=2,profile=tiny" in text
    assert "tiny-family-s5-0" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--families", "nope"), "unknown family 'nope'"),
        (("--workloads", "x.jsonl", "--window", "5"), "--window: expected START:END"),
        (("--workloads", "x.jsonl", "--fleet", "engines=0"), "--fleet: engines: Input should be greater"),
        (("--workloads", "missing.jsonl"), "missing.jsonl: cannot read"),
    ],
)
def test_bad_family_and_trace_options_exit_2(
    tmp_path: Path, option: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "quality", *option, "--out", str(tmp_path), "--quiet"]) == 2
    assert message in capsys.readouterr().err
