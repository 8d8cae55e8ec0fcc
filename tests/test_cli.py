"""The `kvroute` command: sub-commands found through the `kvroute.commands` entry points, loaded when run."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from kvroute.cli import GROUP, build_parser


def test_every_part_publishes_its_sub_command() -> None:
    names = {e.name for e in entry_points(group=GROUP)}
    assert {"bench", "demo", "operator", "router", "sim", "tune"} <= names


def test_only_the_sub_command_run_is_loaded() -> None:
    code = (
        "import sys; from kvroute.cli import build_parser; build_parser(['sim', 'serve']); "
        "print(sorted(m for m in sys.modules if m.startswith(('kvroute.bench', 'kvroute.router', 'kvroute.operator'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)

    assert result.stdout.strip() == "[]"


def test_the_top_level_help_lists_every_sub_command_with_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser(["--help"]).parse_args(["--help"])

    out = capsys.readouterr().out
    assert "router    KV-cache-aware router" in out
    assert "sim       vLLM-compatible simulator" in out


def test_an_unknown_sub_command_is_refused_naming_the_known_ones() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvroute.cli", "nope"], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 2
    assert "invalid choice: 'nope'" in result.stderr
    assert "'router'" in result.stderr
