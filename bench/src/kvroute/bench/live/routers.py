"""The routers the benchmarks put in front of a fleet: kvroute's proxy and two peers, each its own process.

- `kvroute`: `kvroute router --mode proxy` with the configuration file given (the benchmarks pass the recommended
  one, `kvroute.router.config.recommended`); ready when `/readyz` answers 200, i.e. it scraped an endpoint.
- `sglang-router`: the PyPI build, `sglang-router launch --policy cache_aware` with `--log-level warn` (at info
  it logs two lines per request, which costs it about a fifth of its CPU).
- `vllm-router`: the PyPI build, `vllm-router --policy cache_aware`.
- `dynamo-kv`, `dynamo-approx`: NVIDIA Dynamo's frontend and KV router (`--router-mode kv`, and its approximate
  mode without KV events), in Dynamo's own venv, over one worker adapter per simulator (`kvroute.bench.live.
  dynamo`; `make dynamo` installs it). They take the prompt as the simulator's token ids.

The peers come from the optional dependency group `peers` (`pip install -e '.[peers]'`); a peer that is not
installed raises `RouterUnavailable` naming that. Both peers bind 127.0.0.1 and a Prometheus port of their own
(both default to the same one). They answer `/health` before every worker is registered, so readiness polls their
`GET /workers` until it lists every worker as healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from kvroute.bench.processes import ManagedProcess, kvroute_command, loopback

KVROUTE = "kvroute"
SGLANG = "sglang-router"
VLLM = "vllm-router"
DYNAMO_KV = "dynamo-kv"
DYNAMO_APPROX = "dynamo-approx"
ROUTERS = (KVROUTE, SGLANG, VLLM)  # the default selection
ALL_ROUTERS = (KVROUTE, DYNAMO_KV, DYNAMO_APPROX, SGLANG, VLLM)
PEERS = (SGLANG, VLLM)
DYNAMO = {DYNAMO_KV: "kv", DYNAMO_APPROX: "approx"}  # row name -> the Dynamo router's mode


class RouterUnavailable(RuntimeError):
    """The router cannot run on this machine (e.g. its package is not installed)."""


@dataclass(frozen=True)
class RouterSite:
    """Where one router listens."""

    host: str
    port: int
    metrics_port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def version(name: str) -> str:
    """The installed version of a router ("" when unknown)."""
    if name in DYNAMO:
        from kvroute.bench.live.dynamo import DYNAMO_VERSION

        return DYNAMO_VERSION
    package = "kvroute" if name == KVROUTE else name
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _executable(name: str) -> str:
    """The console script `name` of this interpreter's environment, else of PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RouterUnavailable(f"{name} is not installed (pip install -e '.[peers]')")
    return found


def router_processes(
    name: str,
    site: RouterSite,
    workers: Sequence[str],
    *,
    config: Path | None = None,
    kv_events: Sequence[str] = (),
    workdir: Path | None = None,
) -> list[ManagedProcess]:
    """The unstarted processes of router `name` at `site` in front of `workers` (`host:port` each), the router
    itself last: one process, or for Dynamo a worker adapter per simulator (reading its KV events from
    `kv_events`, Dynamo's state in `workdir`) and then Dynamo's frontend."""
    if name not in DYNAMO:
        return [router_process(name, site, workers, config)]
    from kvroute.bench.live.dynamo import DynamoUnavailable, dynamo_processes

    if workdir is None or len(kv_events) != len(workers):
        raise ValueError("Dynamo needs a work directory and every simulator's KV-events endpoint")
    try:
        return dynamo_processes(DYNAMO[name], loopback(site.host), site.port, workers, kv_events, workdir)
    except DynamoUnavailable as exc:
        raise RouterUnavailable(str(exc)) from None


def router_process(
    name: str, site: RouterSite, workers: Sequence[str], config: Path | None = None, processes: int = 1
) -> ManagedProcess:
    """An unstarted process running router `name` at `site` in front of `workers` (`host:port` each); kvroute
    with `processes` router workers (`--workers`)."""
    host = loopback(site.host)
    urls = [f"http://{worker}" for worker in workers]
    if name == KVROUTE:
        argv = kvroute_command(
            "router", "--mode", "proxy", "--endpoints", ",".join(workers), "--host", host, "--port", str(site.port),
            "--workers", str(processes), *(["--config", str(config)] if config is not None else []),
        )  # fmt: skip
        return ManagedProcess(name, argv, f"{site.base_url}/readyz")
    metrics = ["--prometheus-host", host, "--prometheus-port", str(site.metrics_port)]
    if name == SGLANG:
        argv = [_executable(SGLANG), "launch", "--log-level", "warn"]
    elif name == VLLM:
        argv = [_executable(VLLM)]
    else:
        raise ValueError(f"unknown router {name!r}; known: {', '.join(ROUTERS)}")
    argv += ["--host", host, "--port", str(site.port), "--policy", "cache_aware", "--worker-urls", *urls, *metrics]
    return ManagedProcess(name, argv, f"{site.base_url}/health")


async def wait_ready(name: str, process: ManagedProcess, site: RouterSite, workers: int, timeout: float) -> None:
    """Until router `name` (run by `process`) serves: `/readyz` for kvroute; for a peer, `/workers` listing
    `workers` healthy workers; for Dynamo, its frontend serving the model with `workers` workers registered."""
    deadline = time.monotonic() + timeout
    if name in DYNAMO:
        from kvroute.bench.live.dynamo import wait_dynamo_ready

        await wait_dynamo_ready(site.base_url, workers, timeout)
        return
    async with aiohttp.ClientSession() as session:
        await process.wait_healthy(session, timeout)
        if name not in PEERS:
            return
        while time.monotonic() < deadline:
            if process.popen is not None and process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{process.output_tail()}")
            if await _healthy_workers(session, site) >= workers:
                return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{process.name} did not report {workers} healthy workers in {timeout:.0f}s")


async def _healthy_workers(session: aiohttp.ClientSession, site: RouterSite) -> int:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
        async with session.get(f"{site.base_url}/workers", timeout=aiohttp.ClientTimeout(total=2)) as response:
            if response.status == 200:
                listing = json.loads(await response.read())
                return sum(1 for worker in listing.get("workers", []) if worker.get("is_healthy"))
    return 0
