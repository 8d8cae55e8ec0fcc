"""`kvroute bench overload --live`, small: real simulators and kvroute's proxy, 2x overload for a few seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_live_overload_answers_every_request_and_samples_the_router_memory(tmp_path: Path) -> None:
    argv = [
        sys.executable, "-m", "kvroute.cli", "bench", "overload", "--live",
        "--overload", "2", "--seeds", "5", "--duration", "4", "--engines", "2", "--max-num-seqs", "4",
        "--modes", "gie-shedding,flow-control-holdback", "--ttl", "2", "--time-scale", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["harness"] == "live"
    runs = results["runs"]
    assert set(runs) == {"s5/critical-alone", "s5/2x/gie-shedding", "s5/2x/flow-control-holdback"}
    for name, run in runs.items():
        assert run["lost"] == 0 and run["client_errors"] == {}, (name, run)
        assert run["bands"]["critical"]["completed"] == run["bands"]["critical"]["requests"] > 0, name
        assert run["router_rss_mib"]["samples"], name
    shed = runs["s5/2x/gie-shedding"]["bands"]["standard"]
    assert set(shed["refused"]) <= {"429"} and shed["completed"] > 0
    held = runs["s5/2x/flow-control-holdback"]
    assert set(held["bands"]["standard"]["refused"]) <= {"503"}
    assert held["jain_fair_share"] > 0.8
    assert "| s5/2x/flow-control-holdback |" in (tmp_path / "results.md").read_text()
