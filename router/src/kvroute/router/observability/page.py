"""The `/metrics` page every front door serves: the router's metrics in Prometheus' text exposition format (the
merged page of every worker of the pod, for a worker of several)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from kvroute.router.observability.metrics import CONTENT_TYPE, RouterMetrics


def metrics_page(metrics: RouterMetrics) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The aiohttp handler of `GET /metrics` for `metrics`."""

    async def page(request: web.Request) -> web.Response:
        body = metrics.render() if metrics.gather is None else await metrics.gather()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    return page
