"""The ext_proc front door over real gRPC: TLS, health, metrics, and completion when streams end early."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography import x509
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvroute.router.extproc import tls
from kvroute.router.extproc.server import ExtProcDoor, ExtProcSettings
from kvroute.router.framework import EndpointMetrics
from kvroute.router.runtime import RouterCore
from tests.support import eventually

_HOSTS = itertools.cycle(f"127.0.9.{i}" for i in range(1, 255))
BODY = b'{"model": "m", "prompt": "hello"}'
METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


@dataclasses.dataclass
class Running:
    door: ExtProcDoor
    host: str
    cert: bytes | None

    def channel(self) -> grpc.aio.Channel:
        address = f"{self.host}:{self.door.port}"
        if self.cert is None:
            return grpc.aio.insecure_channel(address)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.cert)
        return grpc.aio.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", "localhost")])

    def process(self, channel: grpc.aio.Channel) -> Any:
        call = channel.stream_stream(
            METHOD,
            request_serializer=pb.ProcessingRequest.SerializeToString,
            response_deserializer=pb.ProcessingResponse.FromString,
        )
        return call()


@pytest.fixture
async def doors(extproc_core: RouterCore, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    started: list[ExtProcDoor] = []

    async def start(*, secure: bool = True, own_cert: bool = True, **settings: Any) -> Running:
        host = next(_HOSTS)
        cert = None
        cert_path = None
        if secure and own_cert:
            key, cert = tls.self_signed(host)
            (tmp_path / tls.KEY_FILE).write_bytes(key)
            (tmp_path / tls.CERT_FILE).write_bytes(cert)
            cert_path = str(tmp_path)
        options = ExtProcSettings(
            host=host, port=0, health_port=0, metrics_port=0, secure_serving=secure, cert_path=cert_path, **settings
        )
        door = ExtProcDoor(extproc_core.director, options)
        await door.start()
        started.append(door)
        return Running(door, host, cert)

    try:
        yield start
    finally:
        for door in started:
            await door.stop()


def record(core: RouterCore) -> Any:
    return core.holder.current.plugins["recording-hook"].record  # type: ignore[attr-defined]


async def routed(running: Running, call: Any, envoy_messages: Any) -> str:
    """Sends a request's headers and body; returns the destination of the answer."""
    await call.write(envoy_messages.request_headers())
    await call.write(envoy_messages.request_body(BODY, end_of_stream=True))
    headers = await call.read()
    body = await call.read()
    assert envoy_messages.streamed(body) == (BODY, True)
    return str(envoy_messages.set_headers(headers)["x-gateway-destination-endpoint"])


async def test_a_request_over_tls_is_routed_and_completes_when_the_response_ends(
    doors: Any, extproc_core: RouterCore, envoy_messages: Any
) -> None:
    running = await doors()
    async with running.channel() as channel:
        call = running.process(channel)
        destination = await routed(running, call, envoy_messages)
        await call.write(envoy_messages.response_headers(200, {"content-type": "application/json"}))
        assert (await call.read()).WhichOneof("response") == "response_headers"
        await call.write(envoy_messages.response_body(b'{"usage": {"completion_tokens": 4}}', end_of_stream=True))
        assert envoy_messages.streamed(await call.read())[1] is True
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF

    (completion,) = record(extproc_core).completions
    assert (completion.endpoint, completion.error, completion.output_tokens) == (destination, None, 4)


async def test_a_generated_certificate_is_self_signed_for_the_router(doors: Any) -> None:
    running = await doors(own_cert=False)
    pem = await asyncio.to_thread(ssl.get_server_certificate, (running.host, running.door.port))
    certificate = x509.load_pem_x509_certificate(pem.encode())

    assert certificate.subject == certificate.issuer
    assert certificate.subject.rfc4514_string() == "CN=kvroute-router"


def test_a_certificate_directory_without_the_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the TLS certificate in"):
        tls.load(str(tmp_path))


@pytest.mark.parametrize("port", ["main", "health"])
async def test_health_answers_liveness_readiness_and_the_service_name(
    doors: Any, extproc_core: RouterCore, port: str
) -> None:
    running = await doors(secure=False)
    number = running.door.port if port == "main" else running.door.health_port

    async def check(service: str) -> Any:
        async with grpc.aio.insecure_channel(f"{running.host}:{number}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    names = ("liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor", "")
    assert [await check(n) for n in names] == [serving] * 4
    for endpoint in extproc_core.pool.snapshot():
        endpoint.metrics = EndpointMetrics(stale=True)
    assert [await check(n) for n in names] == [serving, not_serving, not_serving, not_serving]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await check("something-else")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_stream_envoy_cancels_completes_the_request_once(
    doors: Any, extproc_core: RouterCore, envoy_messages: Any
) -> None:
    running = await doors()
    async with running.channel() as channel:
        call = running.process(channel)
        await routed(running, call, envoy_messages)
        await call.write(envoy_messages.response_headers(200, {"content-type": "text/event-stream"}))
        await call.read()
        call.cancel()
        await eventually(lambda: len(record(extproc_core).completions) == 1)
    await asyncio.sleep(0.1)

    (completion,) = record(extproc_core).completions
    assert completion.error == "client disconnected"
    sample = extproc_core.metrics.registry.get_sample_value
    assert sample("kvroute_requests_total", {"api": "completions", "code": "499"}) == 1


async def test_stopping_the_server_completes_requests_in_flight(
    doors: Any, extproc_core: RouterCore, envoy_messages: Any
) -> None:
    running = await doors(shutdown_grace=0.2)
    async with running.channel() as channel:
        call = running.process(channel)
        await routed(running, call, envoy_messages)
        await running.door.stop()
        await eventually(lambda: len(record(extproc_core).completions) == 1)

    assert record(extproc_core).completions[0].error == "client disconnected"
    gauges = [
        extproc_core.metrics.registry.get_sample_value("kvroute_requests_in_flight", {"endpoint": e.id})
        for e in extproc_core.pool.snapshot()
    ]
    assert all(value in (None, 0.0) for value in gauges)


async def test_prometheus_metrics_are_served_on_their_port(doors: Any, envoy_messages: Any) -> None:
    running = await doors(secure=False)
    async with running.channel() as channel:
        call = running.process(channel)
        await call.write(envoy_messages.request_headers())
        await call.write(envoy_messages.request_body(b"{}", end_of_stream=True))
        assert (await call.read()).immediate_response.status.code == 400
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{running.host}:{running.door.metrics_port}/metrics") as response,
    ):
        text = await response.text()

    assert response.status == 200
    assert 'kvroute_requests_total{api="completions",code="400"} 1.0' in text


async def test_a_port_in_use_fails_at_start_instead_of_being_shared(doors: Any, extproc_core: RouterCore) -> None:
    running = await doors(secure=False)
    taken = ExtProcSettings(
        host=running.host, port=running.door.port, health_port=0, metrics_port=0, secure_serving=False
    )

    with pytest.raises(RuntimeError, match="Failed to bind"):
        await ExtProcDoor(extproc_core.director, taken).start()


async def test_doors_with_reuse_port_share_their_ports(doors: Any, extproc_core: RouterCore) -> None:
    running = await doors(secure=False, reuse_port=True)
    settings = running.door.settings
    shared = dataclasses.replace(
        settings, port=running.door.port, health_port=running.door.health_port, metrics_port=running.door.metrics_port
    )
    second = ExtProcDoor(extproc_core.director, shared)
    await second.start()
    try:
        assert (second.port, second.health_port) == (running.door.port, running.door.health_port)
    finally:
        await second.stop()
