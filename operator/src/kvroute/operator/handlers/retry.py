"""Retrying a reconcile inside an event handler.

kopf does not retry event handlers (`kopf.on.event`): an error is logged and the next event is awaited. A
reconcile started by an event therefore retries transient failures (`kopf.TemporaryError`) itself, a few times
with growing delays; the periodic resync covers anything still failing after that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import kopf

from kvroute.operator.context import Logger

DELAYS = (1.0, 2.0, 4.0, 8.0)


async def retrying(attempt: Callable[[], Awaitable[None]], logger: Logger) -> None:
    for delay in (*DELAYS, None):
        try:
            await attempt()
        except kopf.TemporaryError as exc:
            if delay is None:
                raise
            logger.info("reconcile failed (%s); retrying in %.0fs", exc, delay)
            await asyncio.sleep(delay)
        else:
            return
