"""One router process: discovery, a core and its front doors, and running them until a signal.

`Router` starts discovery first (so the pool is filled when serving begins), then the core, then the doors, and
stops them in reverse order. `serve` runs a router until SIGINT or SIGTERM, then shuts it down gracefully.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Sequence
from typing import Protocol

from kvroute.router.runtime.core import RouterCore


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class FrontDoor(Service, Protocol):
    """A server translating one protocol into Director calls, built on a core it does not own. `stop` stops
    accepting and lets requests in flight finish (up to the door's grace period)."""


class Router:
    """Discovery (optional: the endpoints may be static), a core and its front doors."""

    def __init__(self, core: RouterCore, doors: Sequence[FrontDoor], discovery: Service | None = None) -> None:
        self.core = core
        self.doors = tuple(doors)
        self.discovery = discovery

    async def start(self) -> None:
        if self.discovery is not None:
            await self.discovery.start()
        try:
            await self.core.start()
        except BaseException:
            await self._stop_discovery()
            raise
        started: list[FrontDoor] = []
        try:
            for door in self.doors:
                await door.start()
                started.append(door)
        except BaseException:
            for door in reversed(started):
                await door.stop()
            await self.core.stop()
            await self._stop_discovery()
            raise

    async def stop(self) -> None:
        try:
            for door in reversed(self.doors):
                await door.stop()
            await self.core.stop()
        finally:
            await self._stop_discovery()

    async def _stop_discovery(self) -> None:
        if self.discovery is not None:
            await self.discovery.stop()

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def serve(router: Router) -> None:
    """Runs `router` until SIGINT or SIGTERM, then stops it gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await router.start()
    try:
        # Everything allocated so far lives as long as the process: keep the cyclic collector from scanning it
        # again and again while requests allocate.
        gc.freeze()
        await stop.wait()
    finally:
        await router.stop()
