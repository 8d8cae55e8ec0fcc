"""A router process: discovery, core and doors started in that order and stopped in reverse."""

from __future__ import annotations

import pytest

from kvroute.router.config.builder import Registry
from kvroute.router.framework import Endpoint
from kvroute.router.runtime import Router, RouterCore


class Part:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    async def start(self) -> None:
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start")
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


def core(registry: Registry) -> RouterCore:
    return RouterCore([Endpoint.create("127.0.0.2", 8000)], registry)


async def test_discovery_starts_first_and_stops_last(registry: Registry) -> None:
    log: list[str] = []
    router = Router(core(registry), [Part("proxy", log), Part("ext_proc", log)], Part("discovery", log))

    async with router:
        assert log == ["start discovery", "start proxy", "start ext_proc"]

    assert log[3:] == ["stop ext_proc", "stop proxy", "stop discovery"]


async def test_a_door_that_cannot_start_stops_what_started(registry: Registry) -> None:
    log: list[str] = []
    router = Router(core(registry), [Part("proxy", log), Part("ext_proc", log, fail=True)], Part("discovery", log))

    with pytest.raises(RuntimeError, match="ext_proc cannot start"):
        await router.start()

    assert log == ["start discovery", "start proxy", "stop proxy", "stop discovery"]
