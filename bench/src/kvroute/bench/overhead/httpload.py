"""A closed-loop HTTP/1.1 load generator that costs little CPU: prepared request bytes, keep-alive connections.

`concurrency` connections each send a request, read the whole answer (Content-Length or chunked), and send the
next, until `total` requests were sent. A request's latency is from its first byte written to its answer's last
byte read. The requests are taken round-robin from `requests` (prepared with `post`). An answer other than 2xx,
or a connection error, counts as an error (the connection is then opened anew).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
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
                reader, writer = stream
                started = time.perf_counter()
                writer.write(next(pick))
                status, close = await asyncio.wait_for(_read_answer(reader), timeout)
                if 200 <= status < 300:
                    result.latencies.append(time.perf_counter() - started)
                else:
                    result.errors += 1
                    result.first_error = result.first_error or f"HTTP {status}"
                if close:
                    writer.close()
                    stream = None
            except _FAILURES as exc:
                result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
                if stream is not None:
                    stream[1].close()
                stream = None
        if stream is not None:
            stream[1].close()
            with contextlib.suppress(OSError):
                await stream[1].wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result
