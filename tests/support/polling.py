"""Waiting for a condition: poll it until it holds, or fail saying what was last seen.

A condition is a callable returning a value (a coroutine, for `eventually`, is awaited). It holds once the value
is truthy, and that value is returned. An `AssertionError` from the condition counts as "not yet"; any other
exception propagates at once (a process that exited, an error the condition did not expect).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
DEFAULT_INTERVAL = 0.02


class _Polls:
    """The deadline and what the last poll saw, for the failure message."""

    def __init__(self, condition: Callable[..., Any], timeout: float, interval: float, message: str | None) -> None:
        self.what = message or getattr(condition, "__name__", repr(condition))
        self.timeout = timeout
        self.interval = interval
        self.deadline = time.monotonic() + timeout
        self.last: Any = None

    def holds(self, outcome: Any) -> bool:
        """Whether `outcome` (the condition's value, or the AssertionError it raised) ends the wait."""
        self.last = outcome
        return not isinstance(outcome, AssertionError) and bool(outcome)

    def pause(self) -> float:
        """The seconds to sleep before the next poll; raises the failure once the time is up."""
        if time.monotonic() > self.deadline:
            error = self.last if isinstance(self.last, AssertionError) else None
            last = f"last error: {error}" if error is not None else f"last value: {self.last!r}"
            raise AssertionError(f"timed out after {self.timeout:g}s waiting for {self.what} ({last})") from error
        return self.interval


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    message: str | None = None,
) -> T:
    """Polls `condition` every `interval` seconds until it holds; returns its value. Fails after `timeout`."""
    polls = _Polls(condition, timeout, interval, message)
    while True:
        try:
            outcome: Any = condition()
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except AssertionError as error:
            outcome = error
        if polls.holds(outcome):
            return outcome  # type: ignore[no-any-return]
        await asyncio.sleep(polls.pause())


def eventually_sync(
    condition: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    message: str | None = None,
) -> T:
    """`eventually` for code outside an event loop (e2e scenarios, process fixtures): blocks between polls."""
    polls = _Polls(condition, timeout, interval, message)
    while True:
        try:
            outcome: Any = condition()
        except AssertionError as error:
            outcome = error
        if polls.holds(outcome):
            return outcome  # type: ignore[no-any-return]
        time.sleep(polls.pause())


async def time_until(
    condition: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.005,
    message: str | None = None,
) -> float:
    """Seconds until `condition` held, polled finely: tests compare them with a bound."""
    started = time.monotonic()
    await eventually(condition, timeout, interval, message)
    return time.monotonic() - started
