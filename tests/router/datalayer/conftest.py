"""Helpers shared by the data-layer tests, as fixtures (test modules cannot import each other)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

Eventually = Callable[..., Awaitable[float]]


async def _eventually(predicate: Callable[[], bool], within: float = 2.0) -> float:
    """Wait until `predicate()` holds; returns how long that took, fails after `within` seconds."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def _scrape_tasks() -> set[asyncio.Task[object]]:
    """The scraper's polling tasks alive in the running loop."""
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("kvroute-scrape-")}


@pytest.fixture
def eventually() -> Eventually:
    return _eventually


@pytest.fixture
def scrape_tasks() -> Callable[[], set[asyncio.Task[object]]]:
    return _scrape_tasks
