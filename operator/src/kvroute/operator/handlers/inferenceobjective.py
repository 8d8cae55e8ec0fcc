"""InferenceObjective events reconcile the pool the objective refers to, and the one it referred to before, so that
the status of each pool's SchedulingProfile lists the pool's objectives. The operator never writes an objective."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvroute.operator.context import Logger, OperatorContext
from kvroute.operator.handlers.referrer import reconcile_referenced_pools
from kvroute.router.config.objectives import pool_of


async def inferenceobjective_event(
    ctx: OperatorContext, event_type: str | None, body: Mapping[str, Any], logger: Logger
) -> None:
    # A status-only update (the endpoint picker's, typically) changes no priority and reconciles nothing.
    await reconcile_referenced_pools(ctx, event_type, body, pool_of(body), logger)
