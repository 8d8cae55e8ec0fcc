"""Child processes a test needs running: started, gated on readiness, output captured, stopped by process group.

Built on the benchmarks' `ManagedProcess` (a new session per child, a temporary log, SIGTERM then SIGKILL to the
group). Every address a test gives them is on 127.0.0.0/8.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable
from typing import IO

from kvroute.bench.processes import ManagedProcess, kvroute_command
from tests.support.polling import eventually_sync

__all__ = ["Processes", "ServerProcess", "kvroute_command"]


class ServerProcess:
    """One child process. Ready when `health_url` answers 200 or `ready()` is true (neither: once started)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        health_url: str | None = None,
        ready: Callable[[], bool] | None = None,
        env: dict[str, str] | None = None,
        grace: float = 10.0,
    ) -> None:
        self._managed = ManagedProcess(name, argv, health_url or "", env)
        self._ready = ready
        self.grace = grace
        # A handle on the log kept past `stop` (which deletes the file): the last lines a process writes are often
        # why it failed.
        self._log: IO[bytes] | None = None
        self._output = ""

    @property
    def name(self) -> str:
        return self._managed.name

    @property
    def argv(self) -> list[str]:
        return self._managed.argv

    @property
    def pid(self) -> int:
        assert self._managed.popen is not None, f"{self.name} is not running"
        return self._managed.popen.pid

    @property
    def running(self) -> bool:
        return self._managed.popen is not None and self._managed.popen.poll() is None

    def start(self, timeout: float = 15.0) -> ServerProcess:
        """Starts the process and waits (up to `timeout` seconds) until it is ready; stops it if it never is."""
        self._managed.start()
        assert self._managed.log is not None
        self._log = open(self._managed.log.name, "rb")  # noqa: SIM115
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        if self._ready is None and not self._managed.health_url:
            return
        try:
            eventually_sync(self._answers, timeout, interval=0.05, message=f"{self.name} to be ready")
        except AssertionError as error:
            raise AssertionError(f"{error}; its output:\n{self.output()}") from None

    def _answers(self) -> bool:
        popen = self._managed.popen
        if popen is None or popen.poll() is not None:
            code = None if popen is None else popen.returncode
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.output()}")
        if self._ready is not None:
            return self._ready()
        try:
            with urllib.request.urlopen(self._managed.health_url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait(self, timeout: float) -> int:
        """Waits for the process to exit (after a signal the test sent it); returns its exit code."""
        assert self._managed.popen is not None, f"{self.name} is not running"
        return self._managed.popen.wait(timeout)

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far, over all its starts (also once stopped)."""
        if self._log is not None:
            self._output += self._log.read().decode(errors="replace")
        return self._output

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds; always reaps the process."""
        self._managed.stop(self.grace)
        self.output()
        if self._log is not None:
            self._log.close()
            self._log = None


class Processes:
    """The child processes of a test (or a module), stopped in reverse order at the end of the `with` block."""

    def __init__(self, show_output: bool = False) -> None:
        """`show_output`: print each process's output when stopping them all (pytest shows it when a test failed)."""
        self.started: list[ServerProcess] = []
        self.show_output = show_output

    def start(self, name: str, argv: list[str], *, timeout: float = 15.0, **options: object) -> ServerProcess:
        """A `ServerProcess(name, argv, **options)`, started and ready."""
        process = ServerProcess(name, argv, **options)  # type: ignore[arg-type]
        self.started.append(process)
        return process.start(timeout)

    def __getitem__(self, name: str) -> ServerProcess:
        """The process last started as `name`."""
        return next(p for p in reversed(self.started) if p.name == name)

    def stop_all(self) -> None:
        while self.started:
            process = self.started.pop()
            process.stop()
            if self.show_output:
                sys.stdout.write(f"----- {process.name} {process.argv}\n{process.output()[-6000:]}\n")

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
