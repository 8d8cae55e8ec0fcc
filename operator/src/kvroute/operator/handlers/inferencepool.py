"""InferencePool events, and the router Deployments' events and periodic resync, all reconcile one pool.

The operator never writes an InferencePool (no finalizer, no annotation, no status): pools are watched with
event handlers only. The periodic drift repair runs as a timer on the router Deployments instead, which the
operator owns (kopf gives each timer's object a finalizer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvroute.operator.context import Logger, OperatorContext
from kvroute.operator.handlers.retry import retrying
from kvroute.operator.reconcile import reconcile_pool
from kvroute.operator.resources.meta import POOL_API_VERSION, POOL_KIND


async def inferencepool_event(
    ctx: OperatorContext, event_type: str | None, body: Mapping[str, Any], logger: Logger
) -> None:
    if ctx.unchanged(body, event_type):
        return  # a status update (a gateway's, typically): nothing the routers depend on
    meta = body["metadata"]
    await retrying(lambda: reconcile_pool(ctx, meta["namespace"], meta["name"], logger), logger)
    ctx.reconciled(body, event_type)


def owning_pool(body: Mapping[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == POOL_KIND and ref.get("apiVersion") == POOL_API_VERSION:
            name = ref.get("name")
            return name if isinstance(name, str) else None
    return None


async def router_deployment_event(ctx: OperatorContext, body: Mapping[str, Any], logger: Logger) -> None:
    """A router Deployment changed (rollout progress, an edit, a deletion): refresh Ready, repair drift."""
    pool = owning_pool(body)
    if pool is not None:
        await retrying(lambda: reconcile_pool(ctx, body["metadata"]["namespace"], pool, logger), logger)


async def router_deployment_resync(ctx: OperatorContext, body: Mapping[str, Any], logger: Logger) -> None:
    """The periodic drift repair of the pool that owns this Deployment (kopf retries `TemporaryError`)."""
    pool = owning_pool(body)
    if pool is not None:
        await reconcile_pool(ctx, body["metadata"]["namespace"], pool, logger)
