"""The processes that put NVIDIA Dynamo's router in front of a simulated fleet, and the wait until it routes.

Dynamo routes only to Dynamo workers, so every simulator gets a worker adapter (`worker.py`, run by the Dynamo
venv's interpreter) that registers with Dynamo and forwards to it. The processes, in start order:

- `dynamo-broker`: the event plane's ZMQ broker (`broker.py`) on two abstract unix sockets named after `workdir`;
- `dynamo-worker-<i>`: one adapter per simulator; `/health` is Dynamo's own system status server;
- `dynamo-frontend`: `python -m dynamo.frontend` (HTTP, preprocessor, KV router) with `--router-mode kv`, and
  `--no-router-kv-events` for the approximate mode, where the router predicts each worker's cache from its own
  routing decisions instead of the workers' KV events.

Everything binds `host` (a loopback address): the frontend `port`, the broker's health check `port + 1`, worker
i's status server `port + 2 + i`; Dynamo's request and response planes take ports the OS assigns on `host`. No
etcd, no NATS: discovery is a directory in `workdir`. All processes log at warning level (`DYN_LOG=warn`), as at
info Dynamo writes several lines per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from kvroute.bench.demo import MODEL
from kvroute.bench.live.dynamo.model import write_model_dir
from kvroute.bench.processes import ManagedProcess, loopback

DYNAMO_VERSION = "1.6.1"
MODES = ("kv", "approx")
NAMESPACE = "kvroute"
COMPONENT = "backend"
ENDPOINT = "generate"
_HERE = Path(__file__).resolve().parent


class DynamoUnavailable(RuntimeError):
    """Dynamo is not installed where the benchmark looks for it."""


def dynamo_venv() -> Path:
    """Where `scripts/dynamo-venv.sh` installs Dynamo (it honours `KVROUTE_CACHE` the same way)."""
    cache = os.environ.get("KVROUTE_CACHE") or str(Path.home() / ".cache" / "kvroute")
    return Path(cache) / "dynamo" / DYNAMO_VERSION / "venv"


def dynamo_python() -> Path:
    """The interpreter of the Dynamo venv; raises `DynamoUnavailable` when the install is missing or unfinished."""
    venv = dynamo_venv()
    python = venv / "bin" / "python"
    if not (venv / ".kvroute-complete").is_file() or not os.access(python, os.X_OK):
        raise DynamoUnavailable(
            f"ai-dynamo {DYNAMO_VERSION} is not installed in {venv}: run `make dynamo` (scripts/dynamo-venv.sh)"
        )
    return python


def dynamo_processes(
    mode: str,
    host: str,
    port: int,
    workers: Sequence[str],
    kv_events: Sequence[str],
    workdir: Path,
    *,
    block_size: int = 16,
    model: str = MODEL,
) -> list[ManagedProcess]:
    """Unstarted processes serving `model` at `http://host:port` through Dynamo's router in `mode` ("kv" or
    "approx"), over the simulators `workers` ("127.0.0.x:port" each) whose KV events are published at `kv_events`
    ("tcp://127.0.0.x:port" each, same order). Writes the model directory and Dynamo's state into `workdir`.
    Start them in list order (a ProcessGroup does); the adapters wait for their simulators, not for each other."""
    if mode not in MODES:
        raise ValueError(f"unknown Dynamo mode {mode!r}; known: {', '.join(MODES)}")
    if len(workers) != len(kv_events):
        raise ValueError(f"{len(workers)} workers but {len(kv_events)} KV-event endpoints")
    python = str(dynamo_python())
    host = loopback(host)
    workdir = workdir.resolve()
    model_dir = write_model_dir(workdir / "model", model)
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    # Abstract unix sockets (Linux): no file to clean up, no path-length limit, unique per scratch directory.
    sockets = f"ipc://@kvroute-dynamo-{hashlib.sha256(bytes(workdir)).hexdigest()[:16]}"
    xsub, xpub = f"{sockets}-in", f"{sockets}-out"
    env = {
        "DYN_DISCOVERY_BACKEND": "file",
        "DYN_FILE_KV": str(workdir / "discovery"),
        "DYN_REQUEST_PLANE": "tcp",
        "DYN_EVENT_PLANE": "zmq",
        "DYN_ZMQ_BROKER_URL": f"xsub={xsub} , xpub={xpub}",
        "DYN_TCP_RPC_HOST": host,
        "DYN_TCP_RESPONSE_STREAM_HOST": host,
        "DYN_EVENT_PLANE_HOST": host,
        "DYN_SYSTEM_HOST": host,
        "DYN_SELF_HOST_METADATA": "0",
        "DYN_LOG": "warn",
        "HF_HUB_OFFLINE": "1",
        "HOME": str(home),
    }
    broker_health = f"http://{host}:{port + 1}/health"
    broker_argv = [python, str(_HERE / "broker.py"), "--xsub", xsub, "--xpub", xpub]
    processes = [
        ManagedProcess(
            "dynamo-broker", [*broker_argv, "--health-host", host, "--health-port", str(port + 1)], broker_health, env
        )
    ]
    for index, (worker, events) in enumerate(zip(workers, kv_events, strict=True)):
        status_port = port + 2 + index
        argv = [
            python, str(_HERE / "worker.py"), "--sim-url", f"http://{worker}", "--kv-events", events,
            "--model-name", model, "--model-dir", str(model_dir), "--block-size", str(block_size),
            "--namespace", NAMESPACE, "--component", COMPONENT, "--endpoint", ENDPOINT,
        ]  # fmt: skip
        health = f"http://{host}:{status_port}/health"
        worker_env = {**env, "DYN_SYSTEM_PORT": str(status_port)}
        processes.append(ManagedProcess(f"dynamo-worker-{index}", argv, health, worker_env))
    frontend = [
        python, "-m", "dynamo.frontend", "--http-host", host, "--http-port", str(port), "--namespace", NAMESPACE,
        "--router-mode", "kv", "--kv-cache-block-size", str(block_size),
        *(["--no-router-kv-events"] if mode == "approx" else []),
    ]  # fmt: skip
    processes.append(ManagedProcess("dynamo-frontend", frontend, f"http://{host}:{port}/health", env))
    return processes


async def wait_dynamo_ready(
    base_url: str, workers: int, timeout: float, *, model: str = MODEL, processes: Sequence[ManagedProcess] = ()
) -> None:
    """Until the frontend at `base_url` lists `model` and has `workers` worker instances registered (its
    `/health` lists them); raises `TimeoutError` after `timeout` seconds, or `RuntimeError` as soon as one of
    `processes` has exited."""
    deadline = time.monotonic() + timeout
    seen = (False, 0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            for process in processes:
                if process.popen is not None and process.popen.poll() is not None:
                    raise RuntimeError(
                        f"{process.name} exited with {process.popen.returncode}:\n{process.output_tail()}"
                    )
            seen = (await _lists_model(session, base_url, model), await _instances(session, base_url))
            if seen[0] and seen[1] >= workers:
                return
            await asyncio.sleep(0.1)
    raise TimeoutError(
        f"Dynamo at {base_url} not ready after {timeout:.0f}s: model listed {seen[0]}, {seen[1]}/{workers} workers"
    )


async def _lists_model(session: aiohttp.ClientSession, base_url: str, model: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
        async with session.get(f"{base_url}/v1/models") as response:
            if response.status == 200:
                listing = json.loads(await response.read())
                return any(card.get("id") == model for card in listing.get("data", []))
    return False


async def _instances(session: aiohttp.ClientSession, base_url: str) -> int:
    """Worker instances of our endpoint that the frontend has discovered."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
        async with session.get(f"{base_url}/health") as response:
            health = json.loads(await response.read())
            return sum(
                1
                for instance in health.get("instances", [])
                if (instance.get("namespace"), instance.get("component"), instance.get("endpoint"))
                == (NAMESPACE, COMPONENT, ENDPOINT)
            )
    return 0
