from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvroute.cli import main


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
