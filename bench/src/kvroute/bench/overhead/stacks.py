"""HTTP stacks side by side: what the two halves of a proxy cost per request, before any routing.

A proxy serves its clients (an HTTP server) and calls the model servers (an HTTP client). This part measures
each half alone, with the same 1 KB completion POST and the same fixed 340-byte JSON answer, closed loop:

- **servers**, each in its own process answering at once, loaded by `httpload` at `concurrency`: `aiohttp`
  (aiohttp's web server on uvloop, as the proxy door runs today), `protocol` (an `asyncio.Protocol` with the
  `httptools` request parser on uvloop: the floor of a Python server), `granian` (granian's Rust HTTP server
  calling a Python RSGI application, one worker, one runtime thread, uvloop);
- **clients**, each in its own process sending `requests` POSTs over `concurrency` keep-alive connections to the
  instant backend (`backend`): `aiohttp` (a `ClientSession` configured as the proxy's upstream session) and
  `protocol` (an `asyncio.Protocol` with the `httptools` response parser).

CPU µs per request is the process' user + system CPU time over the measured requests (after a warm-up).
`python -m kvroute.bench.overhead.stacks serve|client ...` runs one side; `run_stacks` measures them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvroute.bench.live.cpu import session_cpu_seconds
from kvroute.bench.overhead.backend import COMPLETION
from kvroute.bench.overhead.httpload import post, run_load
from kvroute.bench.overhead.proxy import backend, bodies
from kvroute.bench.processes import ManagedProcess, ProcessGroup, loopback

SERVERS = ("aiohttp", "protocol", "granian")
CLIENTS = ("aiohttp", "protocol")
ANSWER = COMPLETION  # the instant backend's answer: both halves move the same bytes
_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(ANSWER)


@dataclass(frozen=True)
class StackRow:
    side: str  # server or client
    stack: str
    requests: int
    requests_per_s: float
    cpu_us_per_request: float
    error: str | None = None


# Servers.


async def rsgi_app(scope: Any, proto: Any) -> None:
    """The granian (RSGI) server's application."""
    await proto()
    proto.response_bytes(200, [("content-type", "application/json")], ANSWER)


class _ServerProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except Exception:
            if self._transport is not None:
                self._transport.close()

    def on_message_complete(self) -> None:
        if self._transport is not None:
            self._transport.write(_HEAD + ANSWER)


async def _serve(stack: str, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    if stack == "protocol":
        server = await loop.create_server(_ServerProtocol, host, port, backlog=2048)
        async with server:
            await server.serve_forever()
        return
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/completions", answer)
    app.router.add_get("/health", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=2048).start()
    await asyncio.Event().wait()


def server_process(stack: str, host: str, port: int) -> ManagedProcess:
    if stack == "granian":
        executable = shutil.which("granian", path=str(sys.prefix) + "/bin")
        if executable is None:
            raise FileNotFoundError("granian is not installed (pip install granian)")
        argv = [
            executable, "--interface", "rsgi", "--host", loopback(host), "--port", str(port), "--workers", "1",
            "--runtime-threads", "1", "--loop", "uvloop", "--no-ws", "--log-level", "warning",
            "kvroute.bench.overhead.stacks:rsgi_app",
        ]  # fmt: skip
    else:
        module = "kvroute.bench.overhead.stacks"
        argv = [sys.executable, "-m", module, "serve", "--stack", stack, "--host", loopback(host), "--port", str(port)]
    return ManagedProcess(f"server-{stack}", argv, "")


# Clients.


class _ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._done: asyncio.Future[bytes] | None = None
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(b"".join(self._body))
        self._body = []

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionError("the server closed the connection"))

    async def request(self, data: bytes) -> bytes:
        assert self.transport is not None
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self._done


async def _client(stack: str, host: str, port: int, total: int, concurrency: int) -> tuple[float, float]:
    """Sends `total` requests (after a warm-up of `concurrency` x 20); (seconds, CPU seconds) of the measured
    ones."""
    body = bodies(1)[0]
    url = f"http://{host}:{port}/v1/completions"
    loop = asyncio.get_running_loop()
    remaining = total

    if stack == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
        headers = {"content-type": "application/json"}

        async def one() -> None:
            async with session.post(url, data=body, headers=headers, skip_auto_headers=("Accept-Encoding",)) as r:
                await r.read()

        async def worker(count: int) -> None:
            for _ in range(count):
                await one()

    else:
        request = post(host, port, "/v1/completions", body)
        connections = [(await loop.create_connection(_ClientProtocol, host, port))[1] for _ in range(concurrency)]

        async def worker_on(protocol: _ClientProtocol, count: int) -> None:
            for _ in range(count):
                await protocol.request(request)

    async def run(count: int) -> None:
        share = [count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)]
        if stack == "aiohttp":
            await asyncio.gather(*(worker(n) for n in share))
        else:
            await asyncio.gather(*(worker_on(p, n) for p, n in zip(connections, share, strict=True)))

    await run(concurrency * 20)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    await run(remaining)
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if stack == "aiohttp":
        await session.close()
    else:
        for protocol in connections:
            if protocol.transport is not None:
                protocol.transport.close()
    return elapsed, usage.ru_utime + usage.ru_stime - cpu0


# Measurement.


async def run_stacks(
    *, requests: int = 20_000, concurrency: int = 32, server_port: int = 18560, backend_port: int = 18570
) -> list[StackRow]:
    rows: list[StackRow] = []
    payloads = [post("127.0.0.1", server_port, "/v1/completions", b) for b in bodies(100)]
    for stack in SERVERS:
        try:
            process = server_process(stack, "127.0.0.1", server_port)
        except FileNotFoundError as exc:
            rows.append(StackRow("server", stack, 0, float("nan"), float("nan"), str(exc)))
            continue
        process.start()
        try:
            await _wait_port("127.0.0.1", server_port, 30.0)
            assert process.popen is not None
            await run_load("127.0.0.1", server_port, payloads, total=concurrency * 20, concurrency=concurrency)
            before = session_cpu_seconds(process.popen.pid)
            load = await run_load("127.0.0.1", server_port, payloads, total=requests, concurrency=concurrency)
            cpu = session_cpu_seconds(process.popen.pid) - before
            answered = len(load.latencies)
            rows.append(
                StackRow("server", stack, answered, load.requests_per_s, cpu * 1e6 / max(answered, 1), load.first_error)
            )
        finally:
            process.stop()
    host = "127.0.0.2"
    async with ProcessGroup([backend(host, backend_port)]):
        for stack in CLIENTS:
            argv = [
                sys.executable, "-m", "kvroute.bench.overhead.stacks", "client", "--stack", stack, "--host", host,
                "--port", str(backend_port), "--requests", str(requests), "--concurrency", str(concurrency),
            ]  # fmt: skip
            done = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
            out, _ = await done.communicate()
            try:
                result = json.loads(out)
                rows.append(
                    StackRow("client", stack, requests, requests / result["seconds"], result["cpu"] * 1e6 / requests)
                )
            except (ValueError, KeyError) as exc:
                rows.append(StackRow("client", stack, 0, float("nan"), float("nan"), f"no result: {exc}"))
    return rows


async def _wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:g}s")


def stacks_table(rows: Sequence[StackRow]) -> str:
    lines = ["| side | stack | requests | req/s | CPU µs/req |", "|---|---|---:|---:|---:|"]
    for r in rows:
        if r.requests == 0:
            lines.append(f"| {r.side} | {r.stack} | — | — | did not run: {r.error} |")
            continue
        lines.append(
            f"| {r.side} | {r.stack} | {r.requests:,} | {r.requests_per_s:,.0f} | {r.cpu_us_per_request:,.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="side", required=True)
    serve = sub.add_parser("serve", help="answer POSTs at once with one HTTP server stack")
    serve.add_argument("--stack", choices=("aiohttp", "protocol"), required=True)
    client = sub.add_parser("client", help="send POSTs with one HTTP client stack; prints seconds and CPU seconds")
    client.add_argument("--stack", choices=CLIENTS, required=True)
    client.add_argument("--requests", type=int, default=20_000)
    client.add_argument("--concurrency", type=int, default=32)
    for side in (serve, client):
        side.add_argument("--host", default="127.0.0.1")
        side.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvloop

    if args.side == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(_serve(args.stack, args.host, args.port))
        return
    seconds, cpu = uvloop.run(_client(args.stack, args.host, args.port, args.requests, args.concurrency))
    print(json.dumps({"seconds": seconds, "cpu": cpu}))


if __name__ == "__main__":
    main()
