from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kvroute.bench.demo import ROUTER_HOST, ROUTER_PORT, SIM_HOSTS, SIM_PORT

ROW = re.compile(r"^\| (kvroute|round-robin) \| ([\d.]+) \| ([\d.]+) \|", re.MULTILINE)


@pytest.mark.integration
def test_demo_compares_kvroute_with_round_robin_and_leaves_no_process(tmp_path: Path) -> None:
    plot = tmp_path / "demo.png"
    command = [sys.executable, "-m", "kvroute.cli", "demo", "--duration", "4", "--rate", "10", "--plot", str(plot)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {m.group(1) for m in ROW.finditer(done.stdout)} == {"kvroute", "round-robin"}
    assert "TTFT p90: kvroute" in done.stdout
    assert plot.stat().st_size > 10_000
    # Every simulator and the router were stopped: nothing listens on their addresses any more (SO_REUSEADDR
    # lets the probe ignore connections lingering in TIME_WAIT, not a listener).
    for host, port in [*((h, SIM_PORT) for h in SIM_HOSTS), (ROUTER_HOST, ROUTER_PORT)]:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
