"""Running a router: one process, or a supervisor and N worker processes (`kvroute router --workers N`).

`serve_settings` builds the router of some settings and serves it until SIGINT or SIGTERM; it is what a process
with one worker runs, and what each worker runs. `run_workers` is the supervisor: it makes the pod's worker
directory (Unix sockets, see `worker`), starts N workers (fresh interpreters, `multiprocessing`'s spawn), and:

- restarts a worker that died (after 1 s, doubling up to 30 s while it keeps dying within a minute of its
  start), so a crash costs the pod one worker's share of the connections for a moment, not the pod;
- stops everything and exits 2 when a worker exits 2: the settings or the configuration cannot be served, and
  every worker would fail the same way;
- on SIGINT or SIGTERM passes SIGTERM to every worker (each drains as a single router does), waits for them for
  `shutdown_grace` seconds plus a margin, kills what is left, and removes the directory.

`default_workers` is `--workers`' default: the CPU limit of the router's pod (cgroup v2 `cpu.max`, or v1's
quota and period) rounded down, at least 1; outside Kubernetes, or without a limit, 1.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from kvroute.router.runtime.build import RouterSettings, SettingsError
from kvroute.router.runtime.worker import WorkerPlan

log = logging.getLogger(__name__)

EXIT_SETTINGS = 2  # a worker's settings or configuration cannot be served
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 60.0  # a worker that lived this long restarts after RESTART_DELAY again
STOP_MARGIN = 5.0  # seconds granted past the doors' grace before the workers are killed
POLL = 0.2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CGROUP = Path("/sys/fs/cgroup")


def default_workers(environ: dict[str, str] | None = None, cgroup: Path = _CGROUP) -> int:
    """The CPU limit of the router's pod, rounded down (at least 1); 1 outside Kubernetes or without a limit."""
    env = os.environ if environ is None else environ
    if "KUBERNETES_SERVICE_HOST" not in env:
        return 1
    limit = cpu_limit(cgroup)
    return 1 if limit is None else max(1, math.floor(limit))


def cpu_limit(cgroup: Path = _CGROUP) -> float | None:
    """Cores this process may use by its cgroup's CPU quota; None without a quota."""
    try:
        quota, _, period = (cgroup / "cpu.max").read_text().partition(" ")
        if quota.strip() == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def serve_settings(settings: RouterSettings) -> int:
    """Builds the router of `settings` and serves it until SIGINT or SIGTERM; 2 when it cannot be built."""
    import asyncio

    import prometheus_client

    from kvroute.router.config.errors import ConfigError
    from kvroute.router.datalayer.kubernetes import ConfigMapError, KubeConfigError
    from kvroute.router.runtime import serve
    from kvroute.router.runtime.build import build_router

    try:
        router = build_router(settings)
    except ConfigError as exc:
        print(f"kvroute router: the configuration is invalid:\n{exc}", file=sys.stderr)
        return EXIT_SETTINGS
    except (ConfigMapError, KubeConfigError, SettingsError) as exc:
        print(f"kvroute router: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    # No `_created` series: one per labelled child would double the size of /metrics for nothing.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(router))
    else:
        uvloop.run(serve(router))
    return 0


def _worker(settings: RouterSettings, log_level: str) -> None:
    """A worker process' entry point."""
    worker = settings.worker
    assert worker is not None
    logging.basicConfig(
        level=log_level.upper(), format=f"%(asctime)s %(levelname)s worker-{worker.index} %(name)s: %(message)s"
    )
    sys.exit(serve_settings(settings))


class _Slot:
    __slots__ = ("delay", "plan", "process", "restart_at", "started")

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.process: BaseProcess | None = None
        self.started = 0.0
        self.delay = RESTART_DELAY
        self.restart_at: float | None = None


def run_workers(settings: RouterSettings, count: int, log_level: str, shutdown_grace: float = 10.0) -> int:
    """Runs `count` workers of `settings` until SIGINT or SIGTERM (see the module's docstring); the exit code."""
    directory = tempfile.mkdtemp(prefix="kvroute-workers-")
    context = multiprocessing.get_context("spawn")
    slots = [_Slot(WorkerPlan(i, count, directory)) for i in range(count)]
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(slot: _Slot) -> None:
        process = context.Process(
            target=_worker,
            args=(replace(settings, worker=slot.plan), log_level),
            name=f"kvroute-worker-{slot.plan.index}",
        )
        process.start()
        slot.process, slot.started, slot.restart_at = process, time.monotonic(), None
        log.info("worker %d started (pid %s)", slot.plan.index, process.pid)

    code = 0
    try:
        for slot in slots:
            start(slot)
        log.info("router running %d workers; directory %s", count, directory)
        while not stopping:
            time.sleep(POLL)
            now = time.monotonic()
            for slot in slots:
                process = slot.process
                if process is not None and process.exitcode is not None:
                    if process.exitcode == EXIT_SETTINGS:
                        log.error("worker %d cannot serve these settings: stopping", slot.plan.index)
                        code = EXIT_SETTINGS
                        stopping.append(0)
                        break
                    lived = now - slot.started
                    delay = RESTART_DELAY if lived >= STABLE_AFTER else slot.delay
                    slot.restart_at, slot.delay = now + delay, min(delay * 2, MAX_RESTART_DELAY)
                    log.error(
                        "worker %d (pid %s) exited with %s after %.0fs; restarting in %.0fs",
                        slot.plan.index,
                        process.pid,
                        process.exitcode,
                        lived,
                        slot.restart_at - now,
                    )
                    process.close()
                    slot.process = None
                elif process is None and slot.restart_at is not None and now >= slot.restart_at:
                    start(slot)
    finally:
        _stop([slot.process for slot in slots if slot.process is not None], shutdown_grace + STOP_MARGIN)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(directory, ignore_errors=True)
    return code


def _stop(processes: list[BaseProcess], wait: float) -> None:
    for process in processes:
        if process.exitcode is None and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            log.error("worker pid %s did not stop within %.0fs: killing it", process.pid, wait)
            process.kill()
            process.join(5.0)
