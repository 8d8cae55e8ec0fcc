"""Shared test helpers: simulator processes on loopback, and components that must exist in CI.

`sim_fleet` (per test) and `module_sim_fleet` (per module) start `kvroute sim serve` subprocesses, each on its
own 127.0.0.x address, wait until `/health` answers and stop them (by process group) at teardown.
"""

from __future__ import annotations

import importlib
import itertools
import os
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

from tests.support import ServerProcess, free_port, kvroute_command

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


class SimProcess(ServerProcess):
    """One `kvroute sim serve` process."""

    def __init__(self, host: str, port: int, args: tuple[str, ...]) -> None:
        argv = kvroute_command("sim", "serve", "--host", host, "--port", str(port), *args)
        super().__init__(f"sim-{host}-{port}", argv, health_url=f"http://{host}:{port}/health", grace=5.0)
        self.host = host
        self.port = port
        self.args = args

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pod_name(self) -> str:
        return f"sim-{self.host}-{self.port}"


def start_sim(*args: str, host: str | None = None, port: int | None = None) -> SimProcess:
    """Start `kvroute sim serve ARGS` on `host` (next free 127.0.0.x) and wait until it is healthy."""
    host = host or next_loopback_host()
    sim = SimProcess(host, port or free_port(host), tuple(args))
    sim.start()
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
