"""What the router forgets when endpoints leave the pool.

`forget_removed_endpoints` subscribes to the pool once, where a router is assembled. On every change that removed
endpoints it calls `on_endpoints_removed` of every `EndpointObserver` plugin of the configuration in force
(`holder.current`, read at that moment: plugins of an older configuration are gone or carried over into it), then
drops the endpoints' per-endpoint metric series (`RouterMetrics.forget_endpoint`). It runs inside the pool's
notification, on the event loop, so it never interleaves with a scheduling cycle. An observer that raises is
logged and the others are still called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.pool import EndpointPool, PoolChange
from kvroute.router.framework import EndpointObserver
from kvroute.router.observability import RouterMetrics

log = logging.getLogger(__name__)


def forget_removed_endpoints(
    pool: EndpointPool, holder: ConfigHolder, metrics: RouterMetrics | None = None
) -> Callable[[], None]:
    """Subscribes to `pool`; returns the function that unsubscribes."""

    def on_change(change: PoolChange) -> None:
        if not change.removed:
            return
        ids = [endpoint.id for endpoint in change.removed]
        for plugin in holder.current.plugins.values():
            if isinstance(plugin, EndpointObserver):
                try:
                    plugin.on_endpoints_removed(ids)
                except Exception:
                    log.exception("plugin %r failed to forget removed endpoints %s", plugin.name, ", ".join(ids))
        if metrics is not None:
            for endpoint_id in ids:
                metrics.forget_endpoint(endpoint_id)

    return pool.subscribe(on_change)
