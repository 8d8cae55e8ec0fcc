"""The shared test machinery itself: what a failed wait says, and that a process is gated, heard and stopped."""

from __future__ import annotations

import os
import sys

import pytest

from tests.support import Processes, eventually, eventually_sync, free_port

HOST = "127.0.14.1"


async def test_eventually_returns_the_first_truthy_value() -> None:
    values = iter([0, None, [], "ready"])
    assert await eventually(lambda: next(values), interval=0) == "ready"


async def test_eventually_awaits_an_async_condition() -> None:
    calls = []

    async def condition() -> int:
        calls.append(1)
        return len(calls) >= 3

    assert await eventually(condition, interval=0) is True
    assert len(calls) == 3


async def test_a_timeout_names_the_wait_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0.05s waiting for the pool \(last value: \[\]\)"):
        await eventually(lambda: [], timeout=0.05, message="the pool")


def test_a_failed_assertion_counts_as_not_yet_and_is_reported() -> None:
    def condition() -> bool:
        assert 1 + 1 == 3, "arithmetic"
        return True

    with pytest.raises(AssertionError, match=r"waiting for condition .*last error: arithmetic"):
        eventually_sync(condition, timeout=0.05)


def test_any_other_error_propagates_at_once() -> None:
    def condition() -> bool:
        raise KeyError("gone")

    with pytest.raises(KeyError):
        eventually_sync(condition, timeout=5)


def test_a_process_is_ready_when_its_health_url_answers_and_is_stopped_with_its_group() -> None:
    port = free_port(HOST)
    server = [sys.executable, "-m", "http.server", "--bind", HOST, str(port)]
    with Processes() as processes:
        process = processes.start("http", server, health_url=f"http://{HOST}:{port}/")
        assert process.running
        pid = process.pid
    assert not process.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "GET / HTTP" in process.output()  # its log, read after it stopped


def test_a_process_that_exits_fails_the_start_with_its_output() -> None:
    failing = [sys.executable, "-c", "import sys; print('bad flag'); sys.exit(3)"]
    with Processes() as processes, pytest.raises(RuntimeError, match=r"(?s)exited with 3.*bad flag"):
        processes.start("failing", failing, ready=lambda: False)
