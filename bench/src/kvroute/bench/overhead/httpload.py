"""HTTP/1.1 load generators that cost little CPU: prepared request bytes, keep-alive connections.

`run_load` is a closed loop: `concurrency` connections each send a request, read the whole answer (Content-Length
or chunked), and send the next, until `total` requests were sent. A request's latency is from its first byte
written to its answer's last byte read. `run_paced` is an open loop: requests start at Poisson arrival times of a
given mean rate, whatever the answers do, each on an idle kept-alive connection (a new one when none is idle);
a request's latency counts from its arrival time, so a stalled server is not hidden by a stalled client.

The requests are taken round-robin from `requests` (prepared with `post`). An answer other than 2xx,
or a connection error, counts as an error (the connection is then opened anew).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


def post(host: str, port: int, path: str, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        path.encode(),
        host.encode(),
        port,
        len(body),
        body,
    )


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests only
    errors: int = 0
    elapsed: float = 0.0
    first_error: str | None = None

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else 0.0


class _BadAnswer(Exception):
    pass


_FAILURES = (
    OSError,
    TimeoutError,
    ValueError,
    IndexError,
    _BadAnswer,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
)


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Reads one answer; (status, whether the server will close the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    chunked = close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        raise _BadAnswer("an answer without Content-Length or chunked encoding")
    return status, close


async def _exchange(
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes, timeout: float
) -> tuple[int, bool]:
    reader, writer = stream
    writer.write(request)
    return await asyncio.wait_for(_read_answer(reader), timeout)


def _record(result: LoadResult, status: int, latency: float) -> None:
    if 200 <= status < 300:
        result.latencies.append(latency)
    else:
        result.errors += 1
        result.first_error = result.first_error or f"HTTP {status}"


def _failed(result: LoadResult, exc: BaseException) -> None:
    result.errors += 1
    result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"


async def _close(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    stream[1].close()
    with contextlib.suppress(OSError):
        await stream[1].wait_closed()


async def run_load(
    host: str, port: int, requests: Sequence[bytes], *, total: int, concurrency: int, timeout: float = 30.0
) -> LoadResult:
    result = LoadResult()
    counter = itertools.count()
    pick = itertools.cycle(requests)

    async def connection() -> None:
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while next(counter) < total:
            try:
                if stream is None:
                    stream = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                started = time.perf_counter()
                status, close = await _exchange(stream, next(pick), timeout)
                _record(result, status, time.perf_counter() - started)
                if close:
                    stream[1].close()
                    stream = None
            except _FAILURES as exc:
                _failed(result, exc)
                if stream is not None:
                    stream[1].close()
                stream = None
        if stream is not None:
            await _close(stream)

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


async def run_paced(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    total: int,
    rate: float,
    max_connections: int = 256,
    timeout: float = 30.0,
    seed: int = 0,
) -> LoadResult:
    """`total` requests arriving at `rate` per second on average (exponential gaps from `seed`); at most
    `max_connections` in flight, later arrivals wait for one (their wait counts in their latency)."""
    result = LoadResult()
    gaps = random.Random(seed)
    pick = itertools.cycle(requests)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    slots = asyncio.Semaphore(max_connections)

    async def one(arrival: float, request: bytes) -> None:
        async with slots:
            stream = idle.pop() if idle else None
            try:
                if stream is None:
                    stream = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                status, close = await _exchange(stream, request, timeout)
                _record(result, status, time.perf_counter() - arrival)
                if close:
                    stream[1].close()
                else:
                    idle.append(stream)
            except _FAILURES as exc:
                _failed(result, exc)
                if stream is not None:
                    stream[1].close()

    started = time.perf_counter()
    arrival = started
    tasks = []
    for _ in range(total):
        arrival += gaps.expovariate(rate)
        delay = arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(arrival, next(pick))))
    await asyncio.gather(*tasks)
    result.elapsed = time.perf_counter() - started
    for stream in idle:
        await _close(stream)
    return result
