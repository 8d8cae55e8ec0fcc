"""gRPC health checking (`grpc.health.v1.Health/Check`) for the ext_proc server and its health port.

Services: `liveness` is SERVING while the process runs; `readiness`, `envoy.service.ext_proc.v3.ExternalProcessor`
(the name Envoy's `grpc_health_check.service_name` uses for an ext_proc cluster) and `""` (the whole server) are
SERVING when the router can serve (`Director.not_ready_reason` is None) and NOT_SERVING otherwise, and once the
server is stopping. Any other name is NOT_FOUND, as the protocol says. `Watch` is not offered (UNIMPLEMENTED):
Envoy and Kubernetes probes use `Check`.
"""

from __future__ import annotations

from collections.abc import Callable

from grpc_health.v1 import health_pb2

from kvroute.router.extproc.calls import NOT_FOUND, Call, GrpcError, UnaryCall
from kvroute.router.extproc.protocol import SERVICE_NAME

CHECK = "/grpc.health.v1.Health/Check"
LIVENESS = "liveness"
READINESS = "readiness"
_READY_SERVICES = frozenset({READINESS, SERVICE_NAME, ""})
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVING: bytes = health_pb2.HealthCheckResponse(status=SERVING).SerializeToString()
_NOT_SERVING: bytes = health_pb2.HealthCheckResponse(status=NOT_SERVING).SerializeToString()


class HealthService:
    def __init__(self, not_ready_reason: Callable[[], str | None]) -> None:
        self._not_ready_reason = not_ready_reason
        self.stopping = False

    def check(self, request: bytes) -> bytes:
        """A serialised `HealthCheckRequest` to its serialised `HealthCheckResponse`."""
        service = health_pb2.HealthCheckRequest.FromString(request).service
        if service == LIVENESS:
            return _SERVING
        if service in _READY_SERVICES:
            ready = not self.stopping and self._not_ready_reason() is None
            return _SERVING if ready else _NOT_SERVING
        raise GrpcError(NOT_FOUND, f"unknown service {service[:100]!r}")

    def methods(self) -> dict[str, Callable[[], Call]]:
        return {CHECK: lambda: UnaryCall(self.check)}
