"""Many model servers' `/metrics` from one process: a realistic vLLM 0.34 exposition on many loopback addresses.

`python -m kvroute.bench.overhead.exposition --endpoints 1024 --port 18500` listens on the first `--endpoints`
addresses of `addresses()` (127.0.1.1, ..., 127.0.1.254, 127.0.2.1, ...: all of 127.0.0.0/8 is loopback on
Linux), each answering `GET /metrics` with the same exposition and `GET /health` with 200, HTTP/1.1 keep-alive on
a bare asyncio protocol (uvloop when installed). The exposition is `--exposition FILE`, else what `kvroute sim
serve` exports for one idle engine: vLLM 0.34's names, HELP and TYPE lines, gauges, counters and two histograms
(about 90 lines, 8.6 KB).

An idle model server answers with the same bytes every time, which a scraper may notice; a busy one does not.
`--changing F` makes the first F of the addresses (a fraction, 0 to 1) answer every request with new values of
the load gauges the router reads (vLLM's waiting, running and KV-cache usage, SGLang's queue, running and token
usage; the value is the sample line's last field): waiting = n mod 7, running = n mod 13, usage = (n mod 101) /
100 on the connection's n-th request, so consecutive answers always differ.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
from functools import partial
from pathlib import Path
from typing import cast


def addresses(count: int) -> list[str]:
    """`count` loopback addresses, 127.0.1.1 upwards (254 per /24, skipping .0 and .255)."""
    return [f"127.0.{1 + i // 254}.{1 + i % 254}" for i in range(count)]


def simulator_exposition() -> bytes:
    from kvroute.simulator.engine.engine import Engine
    from kvroute.simulator.engine.profiles import PROFILES
    from kvroute.simulator.server.metrics import ServerMetrics

    profile = next(iter(PROFILES.values()))
    return ServerMetrics(Engine(profile), "meta-llama/Llama-3.1-8B-Instruct").render()


LOAD_GAUGES = (
    b"vllm:num_requests_waiting",
    b"vllm:num_requests_running",
    b"vllm:kv_cache_usage_perc",
    b"sglang:num_queue_reqs",
    b"sglang:num_running_reqs",
    b"sglang:token_usage",
)


class Exposition:
    """An exposition whose load gauges take new values on every `render`."""

    def __init__(self, body: bytes) -> None:
        self._literals: list[bytes] = []  # the text around the gauges' values, one more than the values
        self._gauges: list[int] = []  # per value: its index in LOAD_GAUGES, modulo 3 (waiting, running, usage)
        literal = b""
        for line in body.splitlines(keepends=True):
            sample = line.rstrip(b"\r\n")
            name = sample.split(b"{", 1)[0].split(b" ", 1)[0]
            head, space, _ = sample.rpartition(b" ")
            if name not in LOAD_GAUGES or not space:
                literal += line
                continue
            self._literals.append(literal + head + space)
            self._gauges.append(LOAD_GAUGES.index(name) % 3)
            literal = line[len(sample) :]
        self._literals.append(literal)

    def render(self, n: int) -> bytes:
        values = (b"%.1f" % (n % 7), b"%.1f" % (n % 13), b"%.2f" % (n % 101 / 100))
        parts = [self._literals[0]]
        for gauge, literal in zip(self._gauges, self._literals[1:], strict=True):
            parts += (values[gauge], literal)
        return b"".join(parts)


def answer(body: bytes) -> bytes:
    """The HTTP/1.1 response carrying `body`."""
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: %d\r\n\r\n%s"
        % (len(body), body)
    )


def raise_file_limit() -> None:
    """Every endpoint is a listening socket here and a connection in the scraper: lift the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Connection(asyncio.Protocol):
    def __init__(self, metrics: bytes | Exposition) -> None:
        self.metrics = metrics  # the whole answer, or an exposition changing on every request
        self.requests = 0
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            path = self.buffer[: self.buffer.find(b"\r\n")].split(b" ")[1:2]
            self.buffer = self.buffer[end + 4 :]  # GETs only: no body
            if path == [b"/metrics"]:
                self.requests += 1
                metrics = self.metrics
                self.transport.write(metrics if isinstance(metrics, bytes) else answer(metrics.render(self.requests)))
            elif path == [b"/health"]:
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            else:
                self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")


async def serve(count: int, port: int, body: bytes, changing: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    unchanging, exposition = answer(body), Exposition(body)
    changing_count = round(changing * count)
    servers = []
    for index, host in enumerate(addresses(count)):
        metrics = exposition if index < changing_count else unchanging
        servers.append(await loop.create_server(partial(_Connection, metrics), host, port, backlog=64))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--exposition", type=Path, help="serve this file (default: the simulator's)")
    parser.add_argument(
        "--changing", type=float, default=0.0, help="fraction of the addresses whose load gauges change (default 0)"
    )
    args = parser.parse_args()
    if not 0 <= args.changing <= 1:
        parser.error("--changing is a fraction between 0 and 1")
    raise_file_limit()
    body = args.exposition.read_bytes() if args.exposition else simulator_exposition()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.endpoints, args.port, body, args.changing))
    else:
        uvloop.run(serve(args.endpoints, args.port, body, args.changing))


if __name__ == "__main__":
    main()
