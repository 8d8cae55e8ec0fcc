from __future__ import annotations

import socket
import sys

import pytest

from kvroute.bench.processes import ManagedProcess


def test_a_process_is_not_started_on_an_address_another_one_listens_on() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.9.7", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = ManagedProcess("stray", [sys.executable, "-c", "pass"], f"http://127.0.9.7:{port}/health")
        with pytest.raises(RuntimeError, match="already in use"):
            process.start()
        assert process.popen is None
