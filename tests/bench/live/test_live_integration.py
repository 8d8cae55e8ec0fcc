"""`kvroute bench live` end to end, tiny: real simulators, kvroute's proxy and the peers' PyPI builds."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from kvroute.bench.live.dynamo import DynamoUnavailable, dynamo_python

pytestmark = pytest.mark.integration

PEERS = (("sglang-router", "sglang_router"), ("vllm-router", "vllm_router"))
SIM_HOSTS = ("127.0.0.2", "127.0.0.3")
ROW = re.compile(r"^\| (direct|kvroute|sglang-router|vllm-router)[ |]", re.MULTILINE)


def installed_peers(require_component: Callable[[str], ModuleType]) -> list[str]:
    """The peers installed here; in CI a missing one fails the test."""
    peers = []
    for name, module in PEERS:
        try:
            require_component(module)
        except pytest.skip.Exception:
            continue
        peers.append(name)
    return peers


def bindable(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def free_ports() -> tuple[int, int]:
    """A simulator port free on every simulator host, and a router base port with its 20 successors free. Both
    below Linux's ephemeral range (32768 and up), where the benchmark's own client connections take ports."""
    rng = random.Random()
    for _ in range(200):
        sim_port, router_port = rng.randrange(20000, 26000), rng.randrange(26000, 32700)
        if all(bindable(h, sim_port) for h in SIM_HOSTS) and all(
            bindable("127.0.0.1", p) for p in range(router_port, router_port + 20)
        ):
            return sim_port, router_port
    raise RuntimeError("no free ports")


def live_command(routers: list[str], sim_port: int, router_port: int, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "kvroute.cli", "bench", "live", "--routers", ",".join(routers),
        "--sims", "2", "--duration", "1.5", "--rate", "6", "--probe", "5", "--warmup", "4", "--idle", "0.5",
        "--sim-port", str(sim_port), "--router-port", str(router_port), "--json", str(out), *extra,
    ]  # fmt: skip


def assert_nothing_listens(sim_port: int, router_port: int) -> None:
    # SO_REUSEADDR lets the probe ignore connections lingering in TIME_WAIT, not a listener.
    for host in SIM_HOSTS:
        assert bindable(host, sim_port), f"a process still listens on {host}:{sim_port}"
    for port in range(router_port, router_port + 20):
        assert bindable("127.0.0.1", port), f"a process still listens on 127.0.0.1:{port}"


def test_tiny_run_compares_kvroute_and_the_installed_peers_and_leaves_no_process(
    tmp_path: Path, require_component: Callable[[str], ModuleType]
) -> None:
    routers = ["kvroute", *installed_peers(require_component)]
    sim_port, router_port = free_ports()
    out = tmp_path / "live.json"

    done = subprocess.run(
        live_command(routers, sim_port, router_port, out), capture_output=True, text=True, timeout=240, check=False
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert [m.group(1) for m in ROW.finditer(done.stdout)] == ["direct", *routers]
    document = json.loads(out.read_text())
    rows = {row["name"]: row for row in document["rows"]}
    assert list(rows) == ["direct", *routers]
    requests = rows["direct"]["requests"]
    assert requests > 0
    for name, row in rows.items():
        assert row["error"] is None, name
        assert (row["requests"], row["errors"]) == (requests, 0), name
        assert row["ttft_p50_ms"] > 0, name
        assert sum(row["shares"]) == pytest.approx(1.0), name
        if name != "direct":
            assert row["added_p50_ms"] is not None, name
            assert row["trace_cpu_percent"] > 0, name
            assert row["version"], name
    if "vllm-router" in rows:
        # The simulators answer render, so vllm-router's cache_aware got every prompt's tokens without fallback.
        counters = rows["vllm-router"]["counters"]
        assert any('result="render"' in sample and value > 0 for sample, value in counters.items()), counters
        assert not any('result="tokenize"' in sample for sample in counters), counters
    assert document["machine"]["load_before"]
    assert_nothing_listens(sim_port, router_port)


def test_interrupted_run_stops_every_process_it_started(tmp_path: Path) -> None:
    sim_port, router_port = free_ports()
    # A short direct row, then a long idle measurement with the router up: the signal lands while kvroute runs.
    extra = ("--max-requests", "3", "--idle", "30")
    command = live_command(["kvroute"], sim_port, router_port, tmp_path / "live.json", *extra)
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as bench:
        assert bench.stderr is not None
        seen = []
        for line in bench.stderr:
            seen.append(line)
            if line.startswith("kvroute: ready in"):
                break
        time.sleep(1.0)  # into the idle measurement
        bench.send_signal(signal.SIGTERM)
        bench.communicate(timeout=60)
    assert any(line.startswith("kvroute: ready in") for line in seen), "".join(seen)
    assert bench.returncode != 0
    assert_nothing_listens(sim_port, router_port)


TINY_WORKLOAD = """
name: tiny-groups-live
description: four system prompts shared by short questions
seed: 2
fleet: {engines: 2, profile: llama-3.1-8b-h100, overrides: {num_gpu_blocks: 600}}
arrival: [{process: poisson, rate: 8, count: 24}]
generator: {kind: shared-prefix, groups: 4, system_tokens: 400, question_tokens: 32, output_tokens: 8}
"""


def installed_dynamo() -> list[str]:
    """Dynamo's two rows when its venv is installed; in CI a missing one fails the test."""
    try:
        dynamo_python()
    except DynamoUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"Dynamo is missing: {exc}")
        return []
    return ["dynamo-kv", "dynamo-approx"]


def test_replay_of_a_workload_file_reports_the_quality_metrics_and_the_models_fidelity(
    tmp_path: Path, require_component: Callable[[str], ModuleType]
) -> None:
    routers = ["kvroute", *installed_dynamo(), *installed_peers(require_component)]
    sim_port, router_port = free_ports()
    workload = tmp_path / "tiny.yaml"
    workload.write_text(TINY_WORKLOAD)
    out = tmp_path / "out"
    command = live_command(routers, sim_port, router_port, tmp_path / "unused.json", "--workloads", str(workload))
    kv_events_port = router_port + 30  # not among the routers' ports, below the ephemeral range
    command += ["--out", str(out), "--time-scale", "0.5", "--duration", "60", "--kv-events-port", str(kv_events_port)]

    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)

    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    rows = results["results"]["tiny-groups-live"]
    assert list(rows) == ["direct", *routers]
    for name, metrics in rows.items():
        assert (metrics["error"], metrics["errors"], metrics["requests"]) == (None, 0, 24), name
        assert sum(metrics["engine_requests"]) == 24, name
        assert 0 < metrics["ttft_p90_s"] < 5, name
        assert metrics["prefix_hit_rate"] > 0, name
    # Four shared prompts on two engines: every router but the client's round-robin keeps groups together.
    assert rows["kvroute"]["prefix_hit_rate"] > rows["direct"]["prefix_hit_rate"]
    for name in ("dynamo-kv", "dynamo-approx"):
        if name in rows:  # the token-id prompts went through Dynamo's frontend and its workers
            assert rows[name]["version"] == "1.6.1"
            assert rows[name]["prefix_hit_rate"] > rows["direct"]["prefix_hit_rate"], name
    fidelity = results["fidelity"]["tiny-groups-live"]
    assert fidelity["direct"]["model"] == "round-robin"
    assert fidelity["kvroute"]["model"] == "kvroute"
    assert fidelity["direct"]["spread_distance"] == pytest.approx(0, abs=0.05)
    text = (out / "results.md").read_text()
    assert "## Fidelity" in text
    assert (out / "ttft.png").is_file()
    assert_nothing_listens(sim_port, router_port)
