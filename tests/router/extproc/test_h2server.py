"""The gRPC server of the ext_proc door (`h2server`) against grpcio's client: framing, statuses, flow control,
held-back messages, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, TrailersReceived

from kvroute.router.extproc.calls import UNIMPLEMENTED, Call, GrpcError, UnaryCall
from kvroute.router.extproc.h2server import GrpcServer
from tests.support import eventually

_HOSTS = itertools.cycle(f"127.0.11.{i}" for i in range(1, 255))
ECHO = "/test.Echo/Stream"
SLOW = "/test.Echo/Slow"
FAIL = "/test.Echo/Fail"
UPPER = "/test.Echo/Upper"


class Recorder:
    def __init__(self) -> None:
        self.closed: list[str] = []


class Echo(Call):
    """Answers each message with itself; `big:N` with N bytes; `fail` raises; `refuse` ends with a status."""

    def __init__(self, recorder: Recorder, name: str = "echo") -> None:
        self.recorder = recorder
        self.name = name

    def received(self, message: bytes) -> Sequence[bytes]:
        if message.startswith(b"big:"):
            return (b"x" * int(message[4:]),)
        if message == b"fail":
            raise ValueError("the call broke")
        if message == b"refuse":
            raise GrpcError(9, "not now: 100% busy")
        return (message,)

    def ended(self) -> Sequence[bytes]:
        return (b"bye",)

    def close(self) -> None:
        self.recorder.closed.append(self.name)


class Slow(Echo):
    """`wait` is answered `waited` after 50 ms, and holds back the messages that follow until then."""

    def received(self, message: bytes) -> Sequence[bytes]:
        self._wait = message == b"wait"
        return () if self._wait else super().received(message)

    def pending(self) -> Awaitable[Sequence[bytes]] | None:
        return self._late() if self._wait else None

    async def _late(self) -> Sequence[bytes]:
        await asyncio.sleep(0.05)
        return (b"waited",)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[tuple[GrpcServer, str, Recorder]]]]:
    servers: list[GrpcServer] = []

    async def start(max_message_bytes: int = 4 * 1024 * 1024) -> tuple[GrpcServer, str, Recorder]:
        recorder = Recorder()
        methods: dict[str, Callable[[], Call]] = {
            ECHO: lambda: Echo(recorder),
            SLOW: lambda: Slow(recorder, "slow"),
            UPPER: lambda: UnaryCall(bytes.upper),
        }
        server = GrpcServer(methods, max_message_bytes=max_message_bytes)
        host = next(_HOSTS)
        port = await server.start(host, 0)
        servers.append(server)
        return server, f"{host}:{port}", recorder

    yield start
    for server in servers:
        await server.stop(0)


def stream(channel: grpc.aio.Channel, method: str = ECHO) -> Any:
    return channel.stream_stream(method, request_serializer=bytes, response_deserializer=bytes)()


async def test_a_stream_is_answered_message_by_message_then_ends_ok_and_closes_once(serve: Any) -> None:
    _, address, recorder = await serve()
    async with grpc.aio.insecure_channel(address) as channel:
        call = stream(channel)
        answers = []
        for message in (b"one", b"", b"three"):
            await call.write(message)
            answers.append(await call.read())
        await call.done_writing()
        answers.append(await call.read())
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK

    assert answers == [b"one", b"", b"three", b"bye"]
    assert recorder.closed == ["echo"]


async def test_a_unary_method_answers_its_request(serve: Any) -> None:
    _, address, _ = await serve()
    async with grpc.aio.insecure_channel(address) as channel:
        upper = channel.unary_unary(UPPER, request_serializer=bytes, response_deserializer=bytes)
        assert await upper(b"kvroute") == b"KVROUTE"


async def test_an_unknown_method_is_unimplemented(serve: Any) -> None:
    _, address, _ = await serve()
    async with grpc.aio.insecure_channel(address) as channel:
        nothing = channel.unary_unary("/test.Echo/Nothing", request_serializer=bytes, response_deserializer=bytes)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await nothing(b"hello")

    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.value.details() == "unknown method /test.Echo/Nothing"
    assert grpc.StatusCode.UNIMPLEMENTED.value[0] == UNIMPLEMENTED


async def test_a_message_over_the_limit_ends_the_call_with_resource_exhausted(serve: Any) -> None:
    _, address, recorder = await serve(max_message_bytes=1000)
    async with grpc.aio.insecure_channel(address) as channel:
        call = stream(channel)
        await call.write(b"x" * 1000)
        assert await call.read() == b"x" * 1000
        with contextlib.suppress(grpc.aio.AioRpcError):  # the status may come first
            await call.write(b"x" * 1001)
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await call.details() == "message of 1001 bytes over the limit of 1000"
    await eventually(lambda: recorder.closed == ["echo"])


async def test_a_failing_call_ends_unknown_and_the_connection_serves_on(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, address, recorder = await serve()
    async with grpc.aio.insecure_channel(address) as channel:
        broken = stream(channel)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await broken.write(b"fail")
        with caplog.at_level(logging.ERROR, logger="kvroute.router.extproc.h2server"):
            assert await broken.code() == grpc.StatusCode.UNKNOWN
        assert await broken.details() == "unexpected ValueError: the call broke"
        refused = stream(channel)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await refused.write(b"refuse")
        assert await refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert await refused.details() == "not now: 100% busy"
        working = stream(channel)
        await working.write(b"still here")
        assert await working.read() == b"still here"
        await working.done_writing()
        assert await working.read() == b"bye"
        assert await working.code() == grpc.StatusCode.OK

    assert "gRPC stream failed" in caplog.text
    assert recorder.closed == ["echo", "echo", "echo"]


@pytest.mark.parametrize("size", [70_000, 3 * 1024 * 1024])
async def test_answers_larger_than_the_peers_window_arrive_whole(serve: Any, size: int) -> None:
    _, address, _ = await serve()
    options = [("grpc.max_receive_message_length", 8 * 1024 * 1024), ("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = stream(channel)
        for _ in range(2):
            await call.write(f"big:{size}".encode())
            assert len(await call.read()) == size
        await call.done_writing()
        assert await call.read() == b"bye"
        assert await call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("size", [70_000, 3 * 1024 * 1024])
async def test_messages_split_over_frames_arrive_whole(serve: Any, size: int) -> None:
    _, address, _ = await serve()
    options = [("grpc.max_receive_message_length", 8 * 1024 * 1024), ("grpc.max_send_message_length", 8 * 1024 * 1024)]
    message = bytes(range(256)) * (size // 256)
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = stream(channel)
        for _ in range(2):
            await call.write(message)
            assert await call.read() == message
        await call.done_writing()
        assert await call.read() == b"bye"
        assert await call.code() == grpc.StatusCode.OK


async def test_messages_after_a_pending_answer_wait_for_it(serve: Any) -> None:
    _, address, recorder = await serve()
    async with grpc.aio.insecure_channel(address) as channel:
        call = stream(channel, SLOW)
        for message in (b"wait", b"after", b"wait", b"last"):
            await call.write(message)
        await call.done_writing()
        answers = [answer async for answer in call]

    assert answers == [b"waited", b"after", b"waited", b"last", b"bye"]
    assert recorder.closed == ["slow"]


async def test_a_stream_the_client_cancels_closes_its_call(serve: Any) -> None:
    _, address, recorder = await serve()
    async with grpc.aio.insecure_channel(address) as channel:
        call = stream(channel)
        await call.write(b"hello")
        assert await call.read() == b"hello"
        call.cancel()
        await eventually(lambda: recorder.closed == ["echo"])


async def test_stopping_lets_streams_in_flight_finish_and_refuses_new_ones(serve: Any) -> None:
    server, address, recorder = await serve()
    async with grpc.aio.insecure_channel(address) as channel:
        call = stream(channel)
        await call.write(b"before")
        assert await call.read() == b"before"
        stopping = asyncio.create_task(server.stop(5))
        await asyncio.sleep(0.1)
        late = stream(channel)
        await call.write(b"during")
        assert await call.read() == b"during"
        await call.done_writing()
        assert await call.read() == b"bye"
        assert await call.code() == grpc.StatusCode.OK
        assert await late.code() == grpc.StatusCode.UNAVAILABLE  # a new connection, refused: no listener
        await asyncio.wait_for(stopping, 2)

    assert recorder.closed == ["echo"]


async def test_stopping_cuts_the_streams_still_open_after_the_grace(serve: Any) -> None:
    server, address, recorder = await serve()
    async with grpc.aio.insecure_channel(address) as channel:
        call = stream(channel)
        await call.write(b"hello")
        assert await call.read() == b"hello"
        started = asyncio.get_running_loop().time()
        await server.stop(0.2)
        assert 0.2 <= asyncio.get_running_loop().time() - started < 2
        assert recorder.closed == ["echo"]
        assert await call.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_port_in_use_is_an_error(serve: Any) -> None:
    _, address, _ = await serve()
    host, port = address.rsplit(":", 1)
    with pytest.raises(RuntimeError, match="Failed to bind"):
        await GrpcServer({}).start(host, int(port))


async def test_streams_in_flight_are_answered_after_the_peer_sends_goaway(serve: Any) -> None:
    _, address, recorder = await serve()
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    client = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    client.initiate_connection()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", ECHO), (":authority", "test")]
    client.send_headers(1, [*headers, ("content-type", "application/grpc"), ("te", "trailers")])
    client.send_data(1, b"\x00" + (5).to_bytes(4, "big") + b"hello", end_stream=True)
    # GOAWAY (type 7, NO_ERROR, last stream 0) behind the request, as Envoy does when it drains a connection; built
    # by hand because h2 itself refuses to read anything more once it has sent one.
    goaway = (8).to_bytes(3, "big") + bytes((7, 0)) + bytes(4) + bytes(4) + bytes(4)
    writer.write(client.data_to_send() + goaway)
    body, trailers = b"", None
    try:
        while trailers is None:
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, "the server closed the connection before the trailers"
            for event in client.receive_data(data):
                if isinstance(event, DataReceived):
                    body += event.data
                elif isinstance(event, TrailersReceived):
                    trailers = dict(event.headers)
    finally:
        writer.close()

    assert body == b"".join(b"\x00" + len(m).to_bytes(4, "big") + m for m in (b"hello", b"bye"))
    assert trailers == {"grpc-status": "0"}
    await eventually(lambda: recorder.closed == ["echo"])
