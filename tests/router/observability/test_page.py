"""The `/metrics` page both front doors serve."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kvroute.router.observability import CONTENT_TYPE, RouterMetrics
from kvroute.router.observability.page import metrics_page


async def test_the_page_is_the_prometheus_text_of_the_metrics() -> None:
    metrics = RouterMetrics()
    metrics.record_request("chat", 200, 0.5)
    app = web.Application()
    app.router.add_get("/metrics", metrics_page(metrics))

    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.get("/metrics")
        text = await response.text()

    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    assert 'kvroute_requests_total{api="chat",code="200"} 1.0' in text
