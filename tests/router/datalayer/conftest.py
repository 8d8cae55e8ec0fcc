"""Helpers shared by the data-layer tests, as fixtures (test modules cannot import each other)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest


def _scraper_threads() -> list[threading.Thread]:
    """The metrics scrapers' threads alive in this process."""
    return [t for t in threading.enumerate() if t.name == "kvroute-scraper"]


@pytest.fixture
def scraper_threads() -> Callable[[], list[threading.Thread]]:
    return _scraper_threads
