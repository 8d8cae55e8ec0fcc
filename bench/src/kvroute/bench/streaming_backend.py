"""A model server that answers at once, in JSON or in a stream of many chunks, for measuring what sits in front.

`python -m kvroute.bench.streaming_backend --listen 127.0.0.2:18500 --listen 127.0.0.3:18500 --chunks 50`
serves HTTP/1.1 keep-alive on a bare asyncio protocol (uvloop when available) on every `--listen` address, one
process for a whole pool. Request bodies may come with Content-Length or chunked (Envoy's FULL_DUPLEX_STREAMED
ext_proc mode forwards them chunked). Answers:

- `POST /v1/completions`, `/v1/chat/completions`: with `--chunks 0` one JSON completion (16 output tokens, with
  usage); with `--chunks N` an SSE stream of N events of one token each, then a usage event and `[DONE]`, each
  written separately `--chunk-interval` seconds apart (so a proxy sees N chunks, not one coalesced write);
- `GET /metrics`: idle vLLM gauges (so a router's scraper sees fresh metrics); `GET /health`: 200;
- anything else: 404.

Every answer carries `x-inference-pod: <address:port>`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import signal

_USAGE = {"prompt_tokens": 256, "completion_tokens": 16, "total_tokens": 272}
_COMPLETION = json.dumps(
    {"id": "cmpl-bench", "object": "text_completion", "model": "bench-model", "usage": _USAGE}
    | {"choices": [{"index": 0, "text": "word " * 16, "finish_reason": "length"}]}
).encode()
_METRICS = (
    b'vllm:num_requests_waiting{model_name="bench-model"} 0\n'
    b'vllm:num_requests_running{model_name="bench-model"} 0\n'
    b'vllm:kv_cache_usage_perc{model_name="bench-model"} 0\n'
)
_TOKEN_EVENT = b'data: {"choices":[{"index":0,"text":"word ","finish_reason":null}]}\n\n'


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _last_events(chunks: int) -> bytes:
    usage = dict(_USAGE, completion_tokens=chunks, total_tokens=256 + chunks)
    return b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n"


class _Connection(asyncio.Protocol):
    def __init__(self, pod: bytes, chunks: int, interval: float) -> None:
        self._pod = pod
        self._chunks = chunks
        self._interval = interval
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        """Answers every complete request in the buffer (a stream answer pauses this until it is written)."""
        while self._transport is not None and not self._busy:
            request = self._take_request()
            if request is None:
                return
            method, path = request
            if method == b"POST" and path in (b"/v1/completions", b"/v1/chat/completions"):
                if self._chunks:
                    self._busy = True
                    asyncio.get_running_loop().create_task(self._stream())
                    return
                self._answer(200, b"application/json", _COMPLETION)
            elif path == b"/metrics":
                self._answer(200, b"text/plain", _METRICS)
            elif path == b"/health":
                self._answer(200, b"text/plain", b"")
            else:
                self._answer(404, b"text/plain", b"not found")

    def _take_request(self) -> tuple[bytes, bytes] | None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(buffer[:end]).split(b"\r\n")
        method, path = lines[0].split(b" ")[:2]
        length, chunked = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        start = end + 4
        if chunked:  # bodies are JSON, which cannot contain a raw CRLF, so the terminator is unambiguous
            terminator = buffer.find(b"\r\n0\r\n\r\n", start - 2)
            if terminator < 0:
                return None
            del buffer[: terminator + 7]
        else:
            if len(buffer) < start + length:
                return None
            del buffer[: start + length]
        return method, path

    def _answer(self, status: int, content_type: bytes, body: bytes) -> None:
        assert self._transport is not None
        reason = b"OK" if status == 200 else b"Not Found"
        self._transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nx-inference-pod: %s\r\n\r\n%s"
            % (status, reason, content_type, len(body), self._pod, body)
        )

    async def _stream(self) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
            b"x-inference-pod: %s\r\n\r\n" % self._pod
        )
        event = _chunk(_TOKEN_EVENT)
        for _ in range(self._chunks):
            await asyncio.sleep(self._interval)
            if transport.is_closing():
                return
            transport.write(event)
        transport.write(_chunk(_last_events(self._chunks)) + b"0\r\n\r\n")
        self._busy = False
        self._next()


async def serve(listen: list[tuple[str, int]], chunks: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for host, port in listen:
        factory = functools.partial(_Connection, f"{host}:{port}".encode(), chunks, interval)
        server = await loop.create_server(factory, host, port, backlog=4096)
        servers.append(server)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=_address, action="append", required=True, help="HOST:PORT (repeatable)")
    parser.add_argument("--chunks", type=int, default=0, help="SSE events per answer; 0: JSON (default)")
    parser.add_argument("--chunk-interval", type=float, default=0.002, help="seconds between events (0.002)")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.listen, args.chunks, args.chunk_interval))
    else:
        uvloop.run(serve(args.listen, args.chunks, args.chunk_interval))


if __name__ == "__main__":
    main()
