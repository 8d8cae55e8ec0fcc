"""`kvroute bench overhead --parts stacks`: every HTTP stack measured in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_every_server_and_client_stack_is_measured(tmp_path: Path) -> None:
    out = tmp_path / "stacks.json"
    command = [
        sys.executable, "-m", "kvroute.cli", "bench", "overhead", "--parts", "stacks", "--stack-requests", "400",
        "--json", str(out),
    ]  # fmt: skip

    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)

    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["stacks"]
    servers = [("server", stack) for stack in ("aiohttp", "protocol", "granian")]
    assert [(r["side"], r["stack"]) for r in rows] == [*servers, ("client", "aiohttp"), ("client", "protocol")]
    for row in rows:
        assert row["error"] is None and row["requests"] >= 400, row
        assert row["cpu_us_per_request"] > 0, row
