"""SchedulingProfile events reconcile the pool the profile refers to, and the one it referred to before (a
profile moved to another pool, or deleted, may hand its old pool to another profile or back to the default)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvroute.operator.context import Logger, OperatorContext
from kvroute.operator.handlers.referrer import reconcile_referenced_pools
from kvroute.operator.reconcile import pool_of


async def schedulingprofile_event(
    ctx: OperatorContext, event_type: str | None, body: Mapping[str, Any], logger: Logger
) -> None:
    # A status-only update (typically the operator's own) reconciles nothing.
    await reconcile_referenced_pools(ctx, event_type, body, pool_of(body), logger)
