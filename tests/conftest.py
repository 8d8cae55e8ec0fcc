"""Shared test helpers: simulator processes on loopback, and components that must exist in CI.

`sim_fleet` (per test) and `module_sim_fleet` (per module) start `kvroute sim serve` subprocesses, each on its
own 127.0.0.x address, wait until `/health` answers and stop them by PID at teardown.
"""

from __future__ import annotations

import importlib
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import IO

import pytest

# 127.0.0.1 is left to whatever else runs on the machine.
_LOOPBACK_HOSTS = itertools.cycle(f"127.0.0.{i}" for i in range(2, 255))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(module: str) -> ModuleType:
    """Import a component a test needs: skip without it locally, fail in CI (where everything must be present)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if in_ci():
            pytest.fail(f"required component {module!r} is missing: {exc}")
        pytest.skip(f"{module!r} is not available: {exc}")


def next_loopback_host() -> str:
    return next(_LOOPBACK_HOSTS)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class SimProcess:
    """One `kvroute sim serve` process."""

    def __init__(self, host: str, port: int, args: tuple[str, ...], process: subprocess.Popen[bytes], log: IO[bytes]):
        self.host = host
        self.port = port
        self.args = args
        self.process = process
        self._log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pod_name(self) -> str:
        return f"sim-{self.host}-{self.port}"

    def output(self) -> str:
        """What the process has logged so far."""
        return Path(self._log.name).read_text(errors="replace")

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"simulator exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"simulator on {self.base_url} not healthy after {timeout}s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, 15)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, 9)
                self.process.wait()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)


def start_sim(*args: str, host: str | None = None, port: int | None = None) -> SimProcess:
    """Start `kvroute sim serve ARGS` on `host` (next free 127.0.0.x) and wait until it is healthy."""
    host = host or next_loopback_host()
    port = port or free_port(host)
    command = [sys.executable, "-m", "kvroute.cli", "sim", "serve", "--host", host, "--port", str(port), *args]
    log = tempfile.NamedTemporaryFile(prefix="kvroute-sim-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    sim = SimProcess(host, port, tuple(args), process, log)
    try:
        sim.wait_healthy()
    except BaseException:
        sim.stop()
        raise
    return sim


class SimFleet:
    """Starts simulators and stops every one of them (by PID) when the fixture ends."""

    def __init__(self) -> None:
        self.processes: list[SimProcess] = []

    def start(self, *args: str, host: str | None = None, port: int | None = None) -> SimProcess:
        sim = start_sim(*args, host=host, port=port)
        self.processes.append(sim)
        return sim

    def stop_all(self) -> None:
        while self.processes:
            self.processes.pop().stop()


@pytest.fixture
def sim_fleet() -> Iterator[SimFleet]:
    fleet = SimFleet()
    try:
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture(scope="module")
def module_sim_fleet() -> Iterator[SimFleet]:
    fleet = SimFleet()
    try:
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture
def require_component() -> Callable[[str], ModuleType]:
    """`require` as a fixture, for test modules (which cannot import this conftest by name)."""
    return require
