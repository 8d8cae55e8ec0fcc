"""Helpers shared by the data-layer tests, as fixtures (test modules cannot import each other)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest


def _scrape_tasks() -> set[asyncio.Task[object]]:
    """The scraper's polling tasks alive in the running loop."""
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("kvroute-scrape-")}


@pytest.fixture
def scrape_tasks() -> Callable[[], set[asyncio.Task[object]]]:
    return _scrape_tasks
