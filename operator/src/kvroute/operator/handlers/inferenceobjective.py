"""InferenceObjective events reconcile the pool the objective refers to, and the one it referred to before, so that
the status of each pool's SchedulingProfile lists the pool's objectives. The operator never writes an objective."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvroute.operator.context import Logger, OperatorContext, PoolKey
from kvroute.operator.handlers.retry import retrying
from kvroute.operator.reconcile import reconcile_pool
from kvroute.router.config.objectives import pool_of


async def inferenceobjective_event(
    ctx: OperatorContext, event_type: str | None, body: Mapping[str, Any], logger: Logger
) -> None:
    if ctx.unchanged(body, event_type):
        return  # a status update (the endpoint picker's, typically): the priority did not change
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
