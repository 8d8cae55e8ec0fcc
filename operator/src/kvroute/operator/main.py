"""The kopf handlers of the operator; each delegates to `handlers/`. Importing this module registers them.

The handlers find their `OperatorContext` in kopf's memo (`memo.kvroute`), which `kvroute operator run` (or a
test) puts there before starting kopf.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import kopf

from kvroute.operator.context import Logger, OperatorContext
from kvroute.operator.handlers import inferenceobjective, inferencepool, schedulingprofile
from kvroute.operator.kube import INFERENCE_OBJECTIVE
from kvroute.operator.resources.meta import LABEL_MANAGED_BY, MANAGED_BY, POOL_GROUP
from kvroute.operator.settings import FINALIZER

RESYNC_INTERVAL = 60.0  # seconds between two drift repairs of a pool
ROUTER_DEPLOYMENTS = {LABEL_MANAGED_BY: MANAGED_BY}


def _context(memo: Any) -> OperatorContext:
    return cast(OperatorContext, memo.kvroute)


@kopf.on.startup(id="configure")
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ctx = _context(memo)
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING  # Kubernetes Events only for what needs a human
    settings.peering.name = ctx.settings.peering
    settings.peering.standalone = ctx.settings.standalone
    settings.peering.clusterwide = ctx.settings.clusterwide


@kopf.on.login(id="login")
async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    return (await _context(memo).login()).connection_info()


@kopf.on.cleanup(id="close")
async def close(memo: kopf.Memo, **_: Any) -> None:
    await _context(memo).api.close()


@kopf.on.event(POOL_GROUP, "v1", "inferencepools", id="inferencepool_event")
async def inferencepool_event(type: str, body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    await inferencepool.inferencepool_event(_context(memo), type, body, logger)


@kopf.on.event("kvroute.io", "v1alpha1", "schedulingprofiles", id="schedulingprofile_event")
async def schedulingprofile_event(type: str, body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    await schedulingprofile.schedulingprofile_event(_context(memo), type, body, logger)


# Without the InferenceObjective CRD in the cluster kopf serves the other kinds and starts watching objectives when
# the CRD appears.
@kopf.on.event(
    INFERENCE_OBJECTIVE.group, INFERENCE_OBJECTIVE.version, INFERENCE_OBJECTIVE.plural, id="inferenceobjective_event"
)
async def inferenceobjective_event(type: str, body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    await inferenceobjective.inferenceobjective_event(_context(memo), type, body, logger)


@kopf.on.event("apps", "v1", "deployments", labels=ROUTER_DEPLOYMENTS, id="router_deployment_event")
async def router_deployment_event(body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    await inferencepool.router_deployment_event(_context(memo), body, logger)


@kopf.timer(
    "apps",
    "v1",
    "deployments",
    labels=ROUTER_DEPLOYMENTS,
    interval=RESYNC_INTERVAL,
    initial_delay=RESYNC_INTERVAL,
    id="router_deployment_resync",
)
async def router_deployment_resync(body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    await inferencepool.router_deployment_resync(_context(memo), body, logger)
