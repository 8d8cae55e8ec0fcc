"""Metrics the router exposes on `/metrics`."""

from kvroute.router.observability.metrics import CONTENT_TYPE, FleetStats, RouterMetrics

__all__ = ["CONTENT_TYPE", "FleetStats", "RouterMetrics"]
