"""Metrics the router exposes on `/metrics`."""

from kvroute.router.observability.metrics import CONTENT_TYPE, RouterMetrics

__all__ = ["CONTENT_TYPE", "RouterMetrics"]
