"""gRPC health checking (`grpc.health.v1.Health/Check`) for the ext_proc server and its health port.

Services: `liveness` is SERVING while the process runs; `readiness`, `envoy.service.ext_proc.v3.ExternalProcessor`
(the name Envoy's `grpc_health_check.service_name` uses for an ext_proc cluster) and `""` (the whole server) are
SERVING when the router can serve (`Director.not_ready_reason` is None) and NOT_SERVING otherwise, and once the
server is stopping. Any other name is NOT_FOUND, as the protocol says. `Watch` is not offered (UNIMPLEMENTED):
Envoy and Kubernetes probes use `Check`.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvroute.router.extproc.protocol import SERVICE_NAME

LIVENESS = "liveness"
READINESS = "readiness"
_READY_SERVICES = frozenset({READINESS, SERVICE_NAME, ""})
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, not_ready_reason: Callable[[], str | None]) -> None:
        self._not_ready_reason = not_ready_reason
        self.stopping = False

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        service = request.service
        if service == LIVENESS:
            return health_pb2.HealthCheckResponse(status=SERVING)
        if service in _READY_SERVICES:
            ready = not self.stopping and self._not_ready_reason() is None
            return health_pb2.HealthCheckResponse(status=SERVING if ready else NOT_SERVING)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service[:100]!r}")
        raise AssertionError("abort returns only by raising")

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self, server)
