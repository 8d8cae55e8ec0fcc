"""Reconciling one InferencePool: decide its configuration, converge its children, report on its profiles.

1. The pool's SchedulingProfiles (same namespace, `spec.poolRef.name`) are ranked: the oldest configures the pool,
   the others get `Accepted=False, reason Conflict`. A pool that does not exist, or is being deleted, gets no
   children, and its profiles get `Accepted=False, reason PoolNotFound`.
2. The winner's spec is validated and rendered (see `render`). An invalid profile changes nothing that runs: when
   the pool already has a router, its ConfigMap and Deployment stay as they are; a pool without one is set up as
   if it had no profile (the built-in default configuration and router settings).
3. Each child is compared with the live object, and server-side applied only when a field the operator sets
   differs (so a reconcile that finds nothing to do writes nothing, and resourceVersions stay put). A live object
   the pool does not control (e.g. a Service someone else created under the endpointPickerRef's name) is left
   alone and logged. A Service the pool controls under another name (the endpointPickerRef was
   renamed or removed) is deleted; every other child keeps its name for the pool's lifetime.
4. The winner's status: Accepted, Ready (from the router Deployment), configHash, readyReplicas, and the pool's
   InferenceObjectives with their priorities (left out when the operator cannot list them: no CRD in the cluster,
   or no permission); written only when it differs from the stored one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from kvroute.operator import status
from kvroute.operator.context import Logger, OperatorContext
from kvroute.operator.kube import (
    CONFIG_MAP,
    INFERENCE_OBJECTIVE,
    INFERENCE_POOL,
    KINDS,
    SCHEDULING_PROFILE,
    SERVICE,
    ApiError,
)
from kvroute.operator.models import RouterSpec
from kvroute.operator.render import RenderedConfig, default_sections, render_config, render_profile
from kvroute.operator.resources.configmap import config_map
from kvroute.operator.resources.deployment import deployment
from kvroute.operator.resources.meta import LABEL_POOL, Pool, bounded
from kvroute.operator.resources.rbac import role, role_binding, service_account
from kvroute.operator.resources.service import service
from kvroute.router.config.errors import ConfigError
from kvroute.router.config.objectives import pool_priorities

RETRY_DELAY = 10.0  # seconds before kopf retries a reconcile that failed on a transient API error


@dataclass(frozen=True)
class Plan:
    """What a pool runs: the configuration and router settings, and whether they come from its profile."""

    config: RenderedConfig
    router: RouterSpec
    errors: tuple[str, ...] = ()  # the profile's, when it was rejected


def pool_of(profile: Mapping[str, Any]) -> str | None:
    ref = (profile.get("spec") or {}).get("poolRef") or {}
    name = ref.get("name")
    return name if isinstance(name, str) else None


def contains(live: Any, desired: Any) -> bool:
    """Whether `live` already has every field of `desired` with the same value (lists: same length, in order)."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(contains, live, desired))
    return bool(live == desired)


def controlled_by(obj: Mapping[str, Any], pool: Pool) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("controller") and ref.get("uid") == pool.uid for ref in refs)


def plan(ctx: OperatorContext, pool: Pool, profile: Mapping[str, Any] | None) -> Plan:
    """The configuration of `pool` (pure: no API calls)."""
    if profile is not None:
        name = profile["metadata"]["name"]
        try:
            parsed, rendered = render_profile(profile.get("spec") or {}, ctx.registry, pool=pool.name, profile=name)
        except ConfigError as exc:
            errors = exc.errors
        else:
            return Plan(rendered, parsed.router)
    else:
        errors = ()
    return Plan(render_config(default_sections(), ctx.registry, pool=pool.name), RouterSpec(), tuple(errors))


def children(ctx: OperatorContext, pool: Pool, chosen: Plan) -> list[dict[str, Any]]:
    """The pool's children in the order they are applied (what the router needs before the router)."""
    manifests = [
        config_map(pool, chosen.config),
        service_account(pool),
        role(pool),
        role_binding(pool),
        deployment(
            pool,
            chosen.router,
            chosen.config.hash,
            image=ctx.settings.router_image,
            image_pull_policy=ctx.settings.router_image_pull_policy,
        ),
    ]
    svc = service(pool, chosen.router.mode)
    if svc is not None:
        manifests.append(svc)
    return manifests


async def reconcile_pool(ctx: OperatorContext, namespace: str, name: str, logger: Logger) -> None:
    """Reconciles one pool; transient API failures raise `kopf.TemporaryError`, others `kopf.PermanentError`."""
    started = time.perf_counter()
    result = "error"
    try:
        async with ctx.lock((namespace, name)):
            await _reconcile(ctx, namespace, name, logger)
        result = "ok"
    except ApiError as exc:
        if exc.transient:
            raise kopf.TemporaryError(f"InferencePool {namespace}/{name}: {exc}", delay=RETRY_DELAY) from exc
        raise kopf.PermanentError(f"InferencePool {namespace}/{name}: {exc}") from exc
    finally:
        ctx.metrics.reconciles.labels(result).inc()
        ctx.metrics.reconcile_seconds.observe(time.perf_counter() - started)


async def _reconcile(ctx: OperatorContext, namespace: str, name: str, logger: Logger) -> None:
    api = ctx.api
    pool_obj = await api.get(INFERENCE_POOL, namespace, name)
    profiles = [p for p in await api.list(SCHEDULING_PROFILE, namespace) if pool_of(p) == name]
    if pool_obj is None or pool_obj.get("metadata", {}).get("deletionTimestamp"):
        for profile in profiles:
            await _write_status(ctx, profile, status.pool_not_found(name), status.not_ready_unaccepted())
        return
    pool = Pool.from_object(pool_obj)
    objectives = await _objectives(ctx, pool, logger) if profiles else None
    winner, losers = status.elect(profiles)
    for loser in losers:
        winner_name = winner["metadata"]["name"] if winner is not None else ""
        await _write_status(ctx, loser, status.conflict(name, winner_name), status.not_ready_unaccepted())

    chosen = plan(ctx, pool, winner)
    if chosen.errors:
        live_config = await api.get(CONFIG_MAP, namespace, pool.config_map_name)
        if live_config is not None and controlled_by(live_config, pool):
            logger.info("SchedulingProfile rejected; the pool's router keeps its configuration")
            assert winner is not None  # errors come only from a profile
            await _write_status(
                ctx, winner, status.invalid(chosen.errors), status.not_ready_unaccepted(), objectives=objectives
            )
            return

    live_deployment: dict[str, Any] | None = None
    for manifest in children(ctx, pool, chosen):
        live = await _converge(ctx, pool, manifest, logger)
        if manifest["kind"] == "Deployment":
            live_deployment = live
    await _prune_services(ctx, pool)

    if winner is None:
        return
    if chosen.errors:
        await _write_status(
            ctx, winner, status.invalid(chosen.errors), status.not_ready_unaccepted(), objectives=objectives
        )
        return
    ready, ready_replicas = status.ready(live_deployment, chosen.config.hash)
    await _write_status(
        ctx,
        winner,
        status.accepted(),
        ready,
        config_hash=chosen.config.hash,
        router_deployment=pool.router_name,
        ready_replicas=ready_replicas,
        objectives=objectives,
    )


async def _objectives(ctx: OperatorContext, pool: Pool, logger: Logger) -> dict[str, int] | None:
    """The pool's objective -> priority mapping; None when InferenceObjectives cannot be listed (no CRD, 404; no
    permission, 403), which must not stop the pool's reconcile."""
    try:
        listed = await ctx.api.list(INFERENCE_OBJECTIVE, pool.namespace)
    except ApiError as exc:
        if exc.status not in (403, 404):
            raise
        logger.debug("InferenceObjectives in %s not listed: %s", pool.namespace, exc)
        return None
    found = pool_priorities(listed, pool.name)
    for name, error in found.invalid.items():
        logger.info("InferenceObjective %s/%s: %s; not reported", pool.namespace, name, error)
    return found.priorities


async def _converge(
    ctx: OperatorContext, pool: Pool, manifest: Mapping[str, Any], logger: Logger
) -> dict[str, Any] | None:
    """The object after making it match `manifest`: untouched when it already does, or when the pool does not
    control it (then None)."""
    kind = KINDS[manifest["kind"]]
    name = manifest["metadata"]["name"]
    live = await ctx.api.get(kind, pool.namespace, name)
    if live is not None:
        if not controlled_by(live, pool):
            # info, not warning: kopf would post a warning as a new Kubernetes Event at every resync.
            logger.info(
                "%s %s/%s exists and is not controlled by InferencePool %s; leaving it alone",
                kind.kind,
                pool.namespace,
                name,
                pool.name,
            )
            return None
        if contains(live, manifest):
            return live
    ctx.metrics.writes.labels(kind.kind).inc()
    return await ctx.api.apply(manifest)


async def _prune_services(ctx: OperatorContext, pool: Pool) -> None:
    selector = f"{LABEL_POOL}={bounded(pool.name)}"
    for svc in await ctx.api.list(SERVICE, pool.namespace, label_selector=selector):
        name = svc["metadata"]["name"]
        if name != pool.service_name and controlled_by(svc, pool):
            ctx.metrics.writes.labels(SERVICE.kind).inc()
            await ctx.api.delete(SERVICE, pool.namespace, name)


async def _write_status(
    ctx: OperatorContext,
    profile: Mapping[str, Any],
    accepted: status.Condition,
    ready: status.Condition,
    **fields: Any,
) -> None:
    desired = status.profile_status(profile, accepted, ready, **fields)
    if status.status_differs(profile, desired):
        meta = profile["metadata"]
        ctx.metrics.writes.labels(SCHEDULING_PROFILE.kind).inc()
        try:
            await ctx.api.patch_status(SCHEDULING_PROFILE, meta["namespace"], meta["name"], desired)
        except ApiError as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise
