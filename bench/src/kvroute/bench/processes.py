"""Start local server processes (simulators, routers) health-gated, and stop them by PID.

Every process listens on a 127.0.0.x address; nothing here ever dials outside the loopback range.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp


def loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address")
    return host


def kvroute_command(*args: str) -> list[str]:
    """argv running the `kvroute` command with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "kvroute.cli", *args]


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    health_url: str
    # Variables set for the process, over this process's environment (None: inherit it unchanged).
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None
    log: tempfile._TemporaryFileWrapper[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Starts the process; refuses when something already listens on its health URL's address, which would
        otherwise answer the health checks (and the benchmark's traffic) in its place."""
        url = urlsplit(self.health_url)
        if url.hostname is not None and _listening(url.hostname, url.port or 80):
            raise RuntimeError(f"{self.name}: {url.hostname}:{url.port} is already in use by another process")
        self.log = tempfile.NamedTemporaryFile(prefix=f"kvroute-{self.name}-", suffix=".log")  # noqa: SIM115
        env = None if self.env is None else {**os.environ, **self.env}
        self.popen = subprocess.Popen(
            self.argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )

    def output_tail(self, limit: int = 2000) -> str:
        if self.log is None:
            return ""
        with open(self.log.name, "rb") as handle:
            return handle.read().decode(errors="replace")[-limit:]

    async def wait_healthy(self, session: aiohttp.ClientSession, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.output_tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(self.health_url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.name} not healthy after {timeout:.0f}s:\n{self.output_tail()}")

    def stop(self, grace: float = 5.0) -> None:
        popen, self.popen = self.popen, None
        if popen is not None and popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(grace)
        if self.log is not None:
            self.log.close()
            self.log = None


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((loopback(host), port)) == 0


class ProcessGroup:
    """Starts processes together, waits until each answers its health URL, stops them all (also on error)."""

    def __init__(self, processes: Sequence[ManagedProcess]) -> None:
        self.processes = list(processes)

    async def start(self, timeout: float = 30.0) -> None:
        try:
            for process in self.processes:
                process.start()
            async with aiohttp.ClientSession() as session:
                await asyncio.gather(*(p.wait_healthy(session, timeout) for p in self.processes))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    async def __aenter__(self) -> ProcessGroup:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


def simulator(host: str, port: int, *extra: str) -> ManagedProcess:
    return ManagedProcess(
        name=f"sim-{host}-{port}",
        argv=kvroute_command("sim", "serve", "--host", loopback(host), "--port", str(port), *extra),
        health_url=f"http://{host}:{port}/health",
    )
