"""The instant backend, the low-overhead load generator and `kvroute bench overhead` against real processes."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from kvroute.bench.overhead.httpload import post, run_load
from kvroute.bench.overhead.proxy import BODY_BYTES, backend, bodies
from kvroute.bench.processes import ProcessGroup

pytestmark = pytest.mark.integration

PEERS = (("sglang-router", "sglang_router"), ("vllm-router", "vllm_router"))


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def test_backend_answers_completions_render_and_errors_and_the_load_counts_them() -> None:
    host = "127.0.0.2"
    port = free_port(host)
    async with ProcessGroup([backend(host, port)]):
        completions = [post(host, port, "/v1/completions", b) for b in bodies(3)]
        ok = await run_load(host, port, completions, total=200, concurrency=4)
        missing = await run_load(host, port, [post(host, port, "/nope", b"{}")], total=5, concurrency=1)
        with socket.create_connection((host, port), timeout=5) as raw:
            raw.sendall(post(host, port, "/v1/completions/render", b"x" * 400))
            rendered = raw.recv(65536)
            raw.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # what a gRPC probe opens with
            closed = raw.recv(65536)

    assert (len(ok.latencies), ok.errors) == (200, 0)
    assert ok.requests_per_s > 0
    assert (len(missing.latencies), missing.errors, missing.first_error) == (0, 5, "HTTP 404")
    head, _, body = rendered.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert json.loads(body) == [{"token_ids": list(range(100))}]  # one id per 4 bytes
    assert closed == b""


def test_bodies_are_one_kilobyte_and_share_their_prompt_start() -> None:
    payloads = [json.loads(b) for b in bodies(3)]
    assert [len(b) for b in bodies(3)] == [BODY_BYTES] * 3
    assert len({p["prompt"] for p in payloads}) == 3
    assert len({p["prompt"][:900] for p in payloads}) == 1


def test_overhead_measures_every_part_with_kvroute_and_the_installed_peers(
    tmp_path: Path, require_component: Callable[[str], ModuleType]
) -> None:
    routers = ["kvroute"]
    for name, module in PEERS:
        try:
            require_component(module)
        except pytest.skip.Exception:
            continue
        routers.append(name)
    out = tmp_path / "overhead.json"
    rng = random.Random()
    command = [
        sys.executable, "-m", "kvroute.cli", "bench", "overhead", "--routers", ",".join(routers),
        "--requests", "100,300", "--warmup", "50", "--idle", "0.3", "--endpoints", "4,8", "--chars", "1000",
        "--budget", "0.005", "--entries", "3000", "--backend-port", str(rng.randrange(20000, 26000)),
        "--router-port", str(rng.randrange(26000, 32700)), "--json", str(out),
    ]  # fmt: skip

    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "| endpoints | prompt chars | default p50 / p99 / CPU p99 µs | recommended p50 / p99 / CPU p99 µs |" in (
        done.stdout
    )
    document = json.loads(out.read_text())
    assert [(c["endpoints"], c["chars"]) for c in document["scheduling"]] == [(4, 1000), (8, 1000)] * 2
    runs = document["proxy"]
    cases = [("direct", 1), *(("kvroute", w) for w in (1, 2)), *((name, 1) for name in routers[1:])]
    assert [(r["name"], r["processes"], r["concurrency"]) for r in runs] == [
        (name, w, c) for name, w in cases for c in (1, 32)
    ]
    for run in runs:
        assert (run["errors"], run["error"]) == (0, None), run
        assert run["requests"] == (100 if run["concurrency"] == 1 else 300)
        if run["name"] != "direct":
            assert run["cpu_us_per_request"] > 0, run
    assert len(document["memory"]) == 5
