from __future__ import annotations

import json

import pytest

from kvroute.cli import main


def test_des_command_prints_a_reproducible_summary(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "des", "--requests", "200", "--engines", "2", "--groups", "4", "--system-tokens", "400"]
    argv += ["--question-tokens", "20", "--output-tokens", "8", "--rate", "20", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    first.pop("wall_s")
    second.pop("wall_s")
    assert first == second
    assert first["requests"] == 200 and first["unfinished"] == 0
    assert 0.5 < first["prefix_hit_rate"] < 1.0  # 4 system prompts of 400 tokens shared by 200 requests
    assert first["ttft_p50_s"] <= first["ttft_p90_s"] <= first["ttft_p99_s"]
