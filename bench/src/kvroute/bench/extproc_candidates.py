"""The candidate gRPC servers of `extproc_servers`, each run as a process of its own:
`python -m kvroute.bench.extproc_candidates NAME --port PORT [--tls-dir DIR]` serves until SIGTERM.

Every candidate does the same work per stream (`LightStream`), the stack's part of the door and nothing of
kvroute's: it decodes each message, answers the end of the request body with a routing answer serialised once
plus the body sent back (`wire.streamed_body`), and the response headers with a constant.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from kvroute.router.extproc import protocol, tls, wire
from kvroute.router.extproc.calls import Call
from kvroute.router.extproc.h2server import GrpcServer

HOST = "127.0.0.1"
METHOD = "Process"


def _routing_answer() -> bytes:
    common = protocol.routing({protocol.DESTINATION_HEADER: "127.0.7.2:18600", "x-request-id": "bench"}, [])
    answer: bytes = protocol.routed_headers(common, "127.0.7.2:18600").SerializeToString()
    return answer


ROUTED = _routing_answer()


class LightStream:
    """The per-stream work every candidate does: the answers to one message (as bytes), in order."""

    def __init__(self) -> None:
        self.body = bytearray()

    def answers(self, data: bytes) -> Sequence[bytes]:
        message = protocol.ProcessingRequest.FromString(data)
        kind = message.WhichOneof("request")
        if kind == "request_body":
            self.body += message.request_body.body
            if message.request_body.end_of_stream:
                return (ROUTED, wire.streamed_body(wire.REQUEST_BODY, bytes(self.body), True))
            return ()
        if kind == "response_headers":
            return (wire.CONTINUE_RESPONSE_HEADERS,)
        return ()


def _identity(data: bytes) -> bytes:
    return data


# The candidate servers (run in the server process).


async def _serve_aio(address: str, credentials: grpc.ServerCredentials | None, options: list[Any], read: bool) -> None:
    async def iterate(messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        stream = LightStream()
        async for data in messages:
            for answer in stream.answers(data):
                yield answer

    async def explicit(messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        stream = LightStream()
        while (data := await context.read()) is not grpc.aio.EOF:
            for answer in stream.answers(data):
                await context.write(answer)

    handler = grpc.stream_stream_rpc_method_handler(
        explicit if read else iterate, request_deserializer=_identity, response_serializer=_identity
    )
    server = grpc.aio.server(options=options)
    handlers = {METHOD: handler}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(protocol.SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(protocol.SERVICE_NAME, handlers)
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials)
    await server.start()
    await _until_terminated()
    await server.stop(0)


def _serve_sync(address: str, credentials: grpc.ServerCredentials | None, workers: int) -> None:
    def process(messages: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        stream = LightStream()
        for data in messages:
            yield from stream.answers(data)

    handler = grpc.stream_stream_rpc_method_handler(
        process, request_deserializer=_identity, response_serializer=_identity
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=workers), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(protocol.SERVICE_NAME, {METHOD: handler}),))
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials)
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    server.stop(0)


async def _serve_grpclib(host: str, port: int, tls_dir: str | None) -> None:
    # Imported by name: grpclib is a candidate here, not a dependency (the comparison skips it when missing).
    const: Any = importlib.import_module("grpclib.const")
    codecs: Any = importlib.import_module("grpclib.encoding.base")
    grpclib_server: Any = importlib.import_module("grpclib.server")

    class BytesCodec(codecs.CodecBase):  # type: ignore[misc]
        __content_subtype__ = "proto"

        def encode(self, message: bytes, message_type: Any) -> bytes:
            return message

        def decode(self, data: bytes, message_type: Any) -> bytes:
            return data

    class Service:
        async def process(self, stream: Any) -> None:
            work = LightStream()
            async for data in stream:
                for answer in work.answers(data):
                    await stream.send_message(answer)

        def __mapping__(self) -> dict[str, Any]:
            path = f"/{protocol.SERVICE_NAME}/{METHOD}"
            return {path: const.Handler(self.process, const.Cardinality.STREAM_STREAM, bytes, bytes)}

    server = grpclib_server.Server([Service()], codec=BytesCodec())
    await server.start(host, port, ssl=tls.server_context(host, tls_dir) if tls_dir else None)
    await _until_terminated()
    server.close()
    await server.wait_closed()


async def _serve_h2(host: str, port: int, tls_dir: str | None) -> None:
    class Light(Call):
        def __init__(self) -> None:
            self.work = LightStream()

        def received(self, message: bytes) -> Sequence[bytes]:
            return self.work.answers(message)

    server = GrpcServer({f"/{protocol.SERVICE_NAME}/{METHOD}": Light})
    await server.start(host, port, tls.server_context(host, tls_dir) if tls_dir else None)
    await _until_terminated()
    await server.stop(0)


async def _until_terminated() -> None:
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()


def _run(coroutine_factory: Callable[[], Any], use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop

        uvloop.run(coroutine_factory())
    else:
        asyncio.run(coroutine_factory())


def serve(candidate: str, port: int, tls_dir: str | None) -> None:
    """Runs `candidate` on HOST:`port` (TLS with the certificate in `tls_dir`) until SIGTERM."""
    spec = CANDIDATES[candidate]
    address = f"{HOST}:{port}"
    credentials = None
    if tls_dir is not None:
        key, cert = tls.load(tls_dir)
        credentials = grpc.ssl_server_credentials([(key, cert)])
    base = [("grpc.so_reuseport", 0)]
    if spec.stack == "grpc.aio":
        options = base + list(spec.options)
        _run(lambda: _serve_aio(address, credentials, options, spec.read), spec.uvloop)
    elif spec.stack == "grpc sync":
        _serve_sync(address, credentials, spec.workers)
    elif spec.stack == "h2 door":
        _run(lambda: _serve_h2(HOST, port, tls_dir), spec.uvloop)
    elif spec.stack == "grpclib":
        _run(lambda: _serve_grpclib(HOST, port, tls_dir), spec.uvloop)
    else:
        raise ValueError(f"unknown stack {spec.stack}")


@dataclass(frozen=True)
class Candidate:
    stack: str  # "grpc.aio", "grpc sync", "grpclib", "h2 door"
    uvloop: bool = True
    options: tuple[tuple[str, Any], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    read: bool = False  # grpc.aio: context.read()/write() instead of the iterator and generator
    workers: int = 0  # grpc sync: thread pool size
    requires: str | None = None  # a module that must be importable


CANDIDATES: dict[str, Candidate] = {
    "grpc.aio, uvloop (the door before)": Candidate("grpc.aio"),
    "grpc.aio, asyncio loop": Candidate("grpc.aio", uvloop=False),
    "grpc.aio, context.read()/write()": Candidate("grpc.aio", read=True),
    "grpc.aio, optimization_target=throughput": Candidate(
        "grpc.aio", options=(("grpc.optimization_target", "throughput"),)
    ),
    "grpc.aio, optimization_target=latency": Candidate("grpc.aio", options=(("grpc.optimization_target", "latency"),)),
    "grpc.aio, BDP probe off, 1000 streams": Candidate(
        "grpc.aio", options=(("grpc.http2.bdp_probe", 0), ("grpc.max_concurrent_streams", 1000))
    ),
    "grpc.aio, GRPC_POLL_STRATEGY=poll": Candidate("grpc.aio", env=(("GRPC_POLL_STRATEGY", "poll"),)),
    "grpc sync, 8 threads": Candidate("grpc sync", workers=8),
    "grpc sync, 64 threads": Candidate("grpc sync", workers=64),
    "grpclib, uvloop": Candidate("grpclib", requires="grpclib"),
    "grpclib, asyncio loop": Candidate("grpclib", uvloop=False, requires="grpclib"),
    "h2 door, uvloop": Candidate("h2 door"),
    "h2 door, asyncio loop": Candidate("h2 door", uvloop=False),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvroute.bench.extproc_candidates", description=__doc__)
    parser.add_argument("candidate", choices=sorted(CANDIDATES))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-dir", help="serve TLS with DIR/tls.crt and DIR/tls.key")
    args = parser.parse_args(argv)
    serve(args.candidate, args.port, args.tls_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
