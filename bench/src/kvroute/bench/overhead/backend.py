"""A model server that answers at once, so that what a benchmark measures in front of it is the router.

`python -m kvroute.bench.overhead.backend --host 127.0.0.2 --port 18400` serves HTTP/1.1 with keep-alive on a
bare asyncio protocol (uvloop when available), a few tens of microseconds of CPU per request:

- `GET /health` (200), `GET /v1/models`, `GET /metrics` (vLLM's gauges: idle, `cache_config_info` with
  `block_size` 16 and `num_gpu_blocks` 100,000);
- `POST /v1/completions` and `/v1/chat/completions`: one fixed non-streaming completion (16 output tokens);
- `POST /tokenize`, `/v1/completions/render`, `/v1/chat/completions/render`: one token id per 4 body bytes,
  for the routers that ask every server for the prompt's tokens;
- anything else: 404. Bytes that are not HTTP/1.1 (e.g. an HTTP/2 or gRPC probe) and bodies without a
  Content-Length close the connection.

Every response carries `x-inference-pod: <pod name>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import cast

COMPLETION = json.dumps(
    {
        "id": "cmpl-bench",
        "object": "text_completion",
        "created": 0,
        "model": "bench-model",
        "choices": [{"index": 0, "text": "word " * 16, "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 256, "completion_tokens": 16, "total_tokens": 272},
    }
).encode()
_MODELS = json.dumps(
    {"object": "list", "data": [{"id": "bench-model", "object": "model", "owned_by": "bench"}]}
).encode()
_METRICS = (
    b'vllm:num_requests_waiting{model_name="bench-model"} 0\n'
    b'vllm:num_requests_running{model_name="bench-model"} 0\n'
    b'vllm:kv_cache_usage_perc{model_name="bench-model"} 0\n'
    b'vllm:cache_config_info{block_size="16",num_gpu_blocks="100000"} 1\n'
)
_JSON = b"application/json"


def _token_ids(body: bytes) -> bytes:
    return json.dumps({"count": len(body) // 4, "tokens": list(range(len(body) // 4))}).encode()


def _render(body: bytes) -> bytes:
    return json.dumps([{"token_ids": list(range(len(body) // 4))}]).encode()


def _render_chat(body: bytes) -> bytes:
    return json.dumps({"token_ids": list(range(len(body) // 4))}).encode()


def answer(method: bytes, path: bytes, body: bytes) -> tuple[int, bytes, bytes]:
    """(status, content type, body) for one request."""
    if method == b"POST":
        if path in (b"/v1/completions", b"/v1/chat/completions"):
            return 200, _JSON, COMPLETION
        if path == b"/tokenize":
            return 200, _JSON, _token_ids(body)
        if path == b"/v1/completions/render":
            return 200, _JSON, _render(body)
        if path == b"/v1/chat/completions/render":
            return 200, _JSON, _render_chat(body)
    elif method == b"GET":
        if path == b"/health":
            return 200, b"text/plain", b""
        if path == b"/metrics":
            return 200, b"text/plain; version=0.0.4", _METRICS
        if path == b"/v1/models":
            return 200, _JSON, _MODELS
    return 404, _JSON, b'{"error": {"message": "not found"}}'


def _content_length(headers: list[bytes]) -> int | None:
    """The body's length; None for a body this server does not read (chunked, or a malformed length)."""
    length = 0
    for line in headers:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None
    return length


class _Connection(asyncio.Protocol):
    def __init__(self, pod: bytes) -> None:
        self.pod = pod
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).split(b"\r\n")
            request_line = head[0].split(b" ")
            if len(request_line) != 3 or not request_line[2].startswith(b"HTTP/1."):
                self.transport.close()
                return
            length = _content_length(head[1:])
            if length is None:
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            status, content_type, payload = answer(request_line[0], request_line[1].split(b"?")[0], body)
            reason = b"OK" if status == 200 else b"Not Found"
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nx-inference-pod: %s\r\n\r\n%s"
                % (status, reason, content_type, len(payload), self.pod, payload)
            )


async def serve(host: str, port: int, pod: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(pod.encode()), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    pod = f"fast-{args.host}-{args.port}"
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, pod))
    else:
        uvloop.run(serve(args.host, args.port, pod))


if __name__ == "__main__":
    main()
