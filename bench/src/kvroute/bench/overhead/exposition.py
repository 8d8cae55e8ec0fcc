"""Many model servers' `/metrics` from one process: a realistic vLLM 0.34 exposition on many loopback addresses.

`python -m kvroute.bench.overhead.exposition --endpoints 1024 --port 18500` listens on the first `--endpoints`
addresses of `addresses()` (127.0.1.1, ..., 127.0.1.254, 127.0.2.1, ...: all of 127.0.0.0/8 is loopback on
Linux), each answering `GET /metrics` with the same exposition and `GET /health` with 200, HTTP/1.1 keep-alive on
a bare asyncio protocol (uvloop when installed). The exposition is `--exposition FILE`, else what `kvroute sim
serve` exports for one idle engine: vLLM 0.34's names, HELP and TYPE lines, gauges, counters and two histograms
(about 90 lines, 8.6 KB).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
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


def raise_file_limit() -> None:
    """Every endpoint is a listening socket here and a connection in the scraper: lift the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Connection(asyncio.Protocol):
    def __init__(self, metrics: bytes) -> None:
        self.metrics = metrics
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
                self.transport.write(self.metrics)
            elif path == [b"/health"]:
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            else:
                self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")


async def serve(count: int, port: int, body: bytes) -> None:
    loop = asyncio.get_running_loop()
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    servers = [
        await loop.create_server(lambda: _Connection(answer), host, port, backlog=64) for host in addresses(count)
    ]
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
    args = parser.parse_args()
    raise_file_limit()
    body = args.exposition.read_bytes() if args.exposition else simulator_exposition()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.endpoints, args.port, body))
    else:
        uvloop.run(serve(args.endpoints, args.port, body))


if __name__ == "__main__":
    main()
