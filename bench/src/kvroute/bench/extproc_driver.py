"""Envoy's side of the ext_proc protocol, played by a grpc.aio client: the router measured alone.

Each request is one `Process` stream carrying what Envoy 1.40 sends in FULL_DUPLEX_STREAMED mode (request headers
with `protocol_config`, the body, an empty end-of-stream body, the response headers, then `chunks` response body
chunks plus one with end of stream when the response body is processed) and reading every answer the router owes.
`drive` runs `total` such streams over `concurrency` concurrent callers on one plaintext HTTP/2 connection, and
returns streams/s and the router process's CPU per stream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvroute.router.extproc import protocol

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class DriveResult:
    streams_per_s: float
    router_cpu_us: float


def _headers(values: dict[str, str]) -> pb.HttpHeaders:
    return pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]
        )
    )


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


class Conversation:
    """The messages of one kind of request, built once."""

    def __init__(self, bodies: list[bytes], chunks: int, response_body: bool) -> None:
        response_mode = protocol.FULL_DUPLEX_STREAMED if response_body else protocol.NONE
        config = pb.ProtocolConfiguration(
            request_body_mode=protocol.FULL_DUPLEX_STREAMED, response_body_mode=response_mode
        )
        request = {":authority": "gateway", ":path": "/v1/completions", ":method": "POST", ":scheme": "http"}
        request |= {"content-type": "application/json", "x-forwarded-proto": "http", "x-request-id": "bench"}
        self.request_headers = pb.ProcessingRequest(request_headers=_headers(request), protocol_config=config)
        self.bodies = [pb.ProcessingRequest(request_body=pb.HttpBody(body=b)) for b in bodies]
        self.end = pb.ProcessingRequest(request_body=pb.HttpBody(end_of_stream=True))
        content_type = "text/event-stream" if chunks else "application/json"
        self.response_headers = pb.ProcessingRequest(
            response_headers=_headers({":status": "200", "content-type": content_type})
        )
        event = b'data: {"choices":[{"index":0,"text":"word ","finish_reason":null}]}\n\n'
        self.chunks = [pb.ProcessingRequest(response_body=pb.HttpBody(body=event)) for _ in range(chunks)]
        done = b"data: [DONE]\n\n" if chunks else b'{"usage": {"completion_tokens": 16}}'
        self.last = pb.ProcessingRequest(response_body=pb.HttpBody(body=done, end_of_stream=True))
        self.response_body = response_body
        self._next = itertools.count()

    async def run(self, channel: grpc.aio.Channel) -> None:
        call = channel.stream_stream(
            METHOD,
            request_serializer=pb.ProcessingRequest.SerializeToString,
            response_deserializer=pb.ProcessingResponse.FromString,
        )()
        await call.write(self.request_headers)
        await call.write(self.bodies[next(self._next) % len(self.bodies)])
        await call.write(self.end)
        routed = await call.read()
        if routed.WhichOneof("response") != "request_headers":
            raise RuntimeError(f"the router did not route the request: {routed}")
        await call.read()
        await call.write(self.response_headers)
        await call.read()
        if self.response_body:
            for chunk in self.chunks:
                await call.write(chunk)
                await call.read()
            await call.write(self.last)
            await call.read()
        await call.done_writing()
        await call.read()


async def drive(
    address: str,
    pid: int,
    bodies: list[bytes],
    *,
    chunks: int,
    response_body: bool,
    total: int,
    concurrency: int,
    root_certificate: bytes | None = None,
) -> DriveResult:
    """With `root_certificate` the connection is TLS, the server's certificate verified against it (for
    `localhost`, which kvroute's generated certificates name)."""
    conversation = Conversation(bodies, chunks, response_body)
    if root_certificate is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificate)
        channel = grpc.aio.secure_channel(
            address, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )
    async with channel:
        for _ in range(50):
            await conversation.run(channel)
        remaining = itertools.count()

        async def caller() -> None:
            while next(remaining) < total:
                await conversation.run(channel)

        cpu, started = _cpu(pid), time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return DriveResult(total / elapsed, (_cpu(pid) - cpu) / total * 1e6)


def body(size: int) -> bytes:
    return json.dumps({"model": "bench-model", "max_tokens": 16, "prompt": "x" * size}).encode()
