"""SchedulingProfile events reconcile the pool the profile refers to, and the one it referred to before (a
profile moved to another pool, or deleted, may hand its old pool to another profile or back to the default)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvroute.operator.context import Logger, OperatorContext, PoolKey
from kvroute.operator.handlers.retry import retrying
from kvroute.operator.reconcile import pool_of, reconcile_pool


async def schedulingprofile_event(
    ctx: OperatorContext, event_type: str | None, body: Mapping[str, Any], logger: Logger
) -> None:
    if ctx.unchanged(body, event_type):
        return  # a status update, typically the operator's own
    meta = body["metadata"]
    pool = pool_of(body)
    current = (meta["namespace"], pool) if pool is not None else None
    previous = ctx.previous_pool(meta.get("uid", ""))
    for key in sorted({key for key in (current, previous) if key is not None}):
        await _reconcile(ctx, key, logger)
    ctx.reconciled(body, event_type, current)


async def _reconcile(ctx: OperatorContext, key: PoolKey, logger: Logger) -> None:
    namespace, name = key
    await retrying(lambda: reconcile_pool(ctx, namespace, name, logger), logger)
