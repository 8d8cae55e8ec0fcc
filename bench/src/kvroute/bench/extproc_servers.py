"""The gRPC server stacks that could carry the ext_proc door, side by side: CPU per stream and streams/s.

`python -m kvroute.bench.extproc_servers` starts each candidate server as its own process on loopback, drives it
with `extproc_driver` (a grpc.aio client sending what Envoy sends in light mode with FULL_DUPLEX_STREAMED request
bodies: request headers, the body, an empty end-of-stream body, then the response headers, and reading the three
answers) and reads the server process's CPU from /proc. Every candidate does the same work per stream, the
stack's part of the door and nothing of kvroute's. `--tls` serves with a self-signed certificate (`extproc.tls`),
as the door does by default. A cell shows the lowest and highest of `--rounds` rounds when they differ by more
than 10%.

Candidates (`extproc_candidates`; `--only TEXT` runs those whose name contains TEXT):

- `grpc.aio`: the door as it was (uvloop, a registered generic handler, answers as bytes), and the same with asyncio's
  own loop, with gRPC's channel options (`grpc.optimization_target`, BDP probing off, a concurrent streams
  limit), with another polling engine (`GRPC_POLL_STRATEGY`), and reading with `context.read()` instead of the
  request iterator;
- `grpc sync`: the synchronous server with a thread pool;
- `grpclib`: the pure-Python asyncio gRPC server on h2 (when installed);
- `h2 door`: the door's gRPC server now, `kvroute.router.extproc.h2server` on the h2 HTTP/2 stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvroute.bench import extproc_driver
from kvroute.bench.extproc_candidates import CANDIDATES, HOST, Candidate
from kvroute.router.extproc import tls

PORT = 19720


@dataclass
class ServerResult:
    name: str
    streams_per_s: list[float]  # one per round
    cpu_us: list[float]  # the server process's CPU per stream, one per round


@dataclass
class ServerProcess:
    """One candidate server as a process of its own, listening on `port`; stopped by its PID."""

    name: str
    port: int
    tls_dir: str | None
    popen: subprocess.Popen[bytes] | None = None
    log: Any = field(default=None, repr=False)

    def __enter__(self) -> ServerProcess:
        spec = CANDIDATES[self.name]
        argv = [sys.executable, "-m", "kvroute.bench.extproc_candidates", self.name, "--port", str(self.port)]
        if self.tls_dir is not None:
            argv += ["--tls-dir", self.tls_dir]
        self.log = tempfile.TemporaryFile()
        env = {**os.environ, **dict(spec.env)}
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}: {self._output()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=1):
                return self
            time.sleep(0.05)
        self.__exit__()
        raise TimeoutError(f"{self.name} did not listen within 20 s")

    def _output(self) -> str:
        self.log.seek(0)
        return str(self.log.read().decode(errors="replace")[-2000:])

    def __exit__(self, *_: object) -> None:
        popen, self.popen = self.popen, None
        if popen is not None and popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        if self.log is not None:
            self.log.close()
            self.log = None


async def measure(
    name: str, *, port: int, tls_dir: str | None, streams: int, concurrency: int, body_bytes: int
) -> extproc_driver.DriveResult:
    """One round of one candidate: streams/s and the server's CPU per stream."""
    root = None if tls_dir is None else (Path(tls_dir) / tls.CERT_FILE).read_bytes()
    with ServerProcess(name, port, tls_dir) as server:
        assert server.popen is not None
        return await extproc_driver.drive(
            f"{HOST}:{port}",
            server.popen.pid,
            [extproc_driver.body(body_bytes - 64)],
            chunks=0,
            response_body=False,
            total=streams,
            concurrency=concurrency,
            root_certificate=root,
        )


def _span(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:,.0f}" if high <= low * 1.1 else f"{low:,.0f}-{high:,.0f}"


def table(results: Sequence[ServerResult]) -> str:
    """A row per candidate; a cell shows the lowest and highest round when they differ by more than 10%."""
    lines = ["| server | server CPU µs/stream | streams/s |", "|---|---:|---:|"]
    lines += [f"| {r.name} | {_span(r.cpu_us)} | {_span(r.streams_per_s)} |" for r in results]
    return "\n".join(lines)


def available(candidate: Candidate) -> bool:
    """Whether the candidate's stack is installed (grpclib is not a dependency)."""
    return candidate.requires is None or importlib.util.find_spec(candidate.requires) is not None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvroute.bench.extproc_servers", description=__doc__)
    parser.add_argument("--streams", type=int, default=3000, help="streams per candidate and round (default 3000)")
    parser.add_argument("--concurrency", type=int, default=32, help="streams at once (default 32)")
    parser.add_argument("--body-bytes", type=int, default=8 * 1024, help="request body size (default 8 KiB)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all candidates (default 2)")
    parser.add_argument("--tls", action="store_true", help="serve over TLS, as the door does by default")
    parser.add_argument("--only", metavar="TEXT", help="run only the candidates whose name contains TEXT")
    parser.add_argument("--port", type=int, default=PORT, help=f"the servers' port on {HOST} (default {PORT})")
    args = parser.parse_args(argv)
    names = [name for name in CANDIDATES if not args.only or args.only in name]
    for name in names:
        if not available(CANDIDATES[name]):
            print(f"{name}: skipped, {CANDIDATES[name].requires} is not installed", flush=True)
    results = {name: ServerResult(name, [], []) for name in names if available(CANDIDATES[name])}
    with tempfile.TemporaryDirectory(prefix="kvroute-servers-") as directory:
        tls_dir = None
        if args.tls:
            key, cert = tls.self_signed(HOST)
            (Path(directory) / tls.KEY_FILE).write_bytes(key)
            (Path(directory) / tls.CERT_FILE).write_bytes(cert)
            tls_dir = directory
        for _ in range(args.rounds):
            for name, result in results.items():
                run = measure(
                    name,
                    port=args.port,
                    tls_dir=tls_dir,
                    streams=args.streams,
                    concurrency=args.concurrency,
                    body_bytes=args.body_bytes,
                )
                measured = asyncio.run(run)
                result.cpu_us.append(measured.router_cpu_us)
                result.streams_per_s.append(measured.streams_per_s)
                print(
                    f"{name}: {measured.router_cpu_us:.0f} µs/stream, {measured.streams_per_s:.0f} streams/s",
                    flush=True,
                )
    print(table(list(results.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
