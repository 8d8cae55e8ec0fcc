"""Events of an object that refers to an InferencePool (a SchedulingProfile, an InferenceObjective): reconcile the
pool it refers to now and the one it referred to before, each retried on conflicts and API errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvroute.operator.context import Logger, OperatorContext, PoolKey
from kvroute.operator.handlers.retry import retrying
from kvroute.operator.reconcile import reconcile_pool


async def reconcile_referenced_pools(
    ctx: OperatorContext, event_type: str | None, body: Mapping[str, Any], pool: str | None, logger: Logger
) -> None:
    """`pool`: the name of the pool `body` refers to (None: none). Nothing happens when only the status changed."""
    if ctx.unchanged(body, event_type):
        return
    meta = body["metadata"]
    current = (meta["namespace"], pool) if pool is not None else None
    previous = ctx.previous_pool(meta.get("uid", ""))
    for key in sorted({key for key in (current, previous) if key is not None}):
        await _reconcile(ctx, key, logger)
    ctx.reconciled(body, event_type, current)


async def _reconcile(ctx: OperatorContext, key: PoolKey, logger: Logger) -> None:
    namespace, name = key
    await retrying(lambda: reconcile_pool(ctx, namespace, name, logger), logger)
