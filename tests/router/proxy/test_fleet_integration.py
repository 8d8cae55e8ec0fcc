"""Two `kvroute router --mode proxy` replicas with fleet sync, in front of real `kvroute sim serve` processes.

The replicas run kvroute's recommended configuration. The scenario is deterministic because a cold prompt (one
no endpoint holds a prefix of) goes to the endpoint the no-hit LRU ranks first: endpoints never cold-served in pool
order, then the least recently cold-served. Replica B first serves one cold prompt of its own, then A serves four
cold prompts, then B serves the same four:

- with sync, A knows B's cold pick and B knows A's four: B sends each prompt where A did (prefix affinity);
- without, A and B each spread the prompts by their own LRU, which B's own prompt shifted by one: B sends every
  one of them elsewhere.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvroute.router.config import recommended
from tests.support import eventually_sync

pytestmark = pytest.mark.integration

MODEL = "kvroute-test"
SIM_ARGS = ("--model", MODEL, "--time-scale", "0.05")
RECOMMENDED = Path(recommended.__file__).with_name(recommended.RECOMMENDED_FILE)
# Replicas with fleet sync listen on 127.0.6.x: away from the simulators (127.0.0.x) and other proxies (127.0.4.x).
_HOSTS = itertools.cycle(f"127.0.6.{i}" for i in range(1, 255))
WAIT = 60.0  # generous: the machine running the tests may be loaded


@pytest.fixture(scope="module")
def sims(module_sim_fleet: Any) -> list[Any]:
    return [module_sim_fleet.start(*SIM_ARGS) for _ in range(4)]


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def start_pair(routers: Callable[..., Any], endpoints: str, *, sync: bool, timeout: str = "10s") -> tuple[Any, Any]:
    """Routers A and B on their own addresses; with `sync`, each lists both fleet addresses (its own included)."""
    hosts = [next(_HOSTS), next(_HOSTS)]
    ports = [free_port(host) for host in hosts]
    peers = ",".join(f"{host}:{port}" for host, port in zip(hosts, ports, strict=True))
    started = []
    for name, host, port in zip("ab", hosts, ports, strict=True):
        flags = ["--fleet-peers", peers, "--fleet-port", str(port), "--replica-id", name] if sync else []
        flags += ["--fleet-peer-timeout", timeout] if sync else []
        started.append(routers(endpoints, *flags, config=RECOMMENDED, host=host))
    if sync:
        for router in started:
            eventually_sync(
                lambda r=router: metric(r, "kvroute_fleet_peers") == 1,
                WAIT,
                message=f"{router.base_url} hears its peer",
            )
    return started[0], started[1]


def metrics_text(router: Any) -> str:
    with urllib.request.urlopen(f"{router.base_url}/metrics", timeout=10) as response:
        return str(response.read().decode())


def metric(router: Any, name: str) -> float | None:
    match = re.search(rf"^{name} (\S+)$", metrics_text(router), re.MULTILINE)
    return float(match.group(1)) if match else None


def idle(router: Any) -> bool:
    """Every request this router forwarded has completed (its response hooks ran)."""
    return not re.search(r"^kvroute_requests_in_flight\{.*\} [1-9]", metrics_text(router), re.MULTILINE)


def settled(router: Any, at_least: int) -> None:
    """Waits until the router applied at least `at_least` peer records, nothing more arrives for a second, and no
    peer request is open: it has heard everything its peer did so far."""
    last: list[float] = []

    def quiet() -> bool:
        applied = metric(router, "kvroute_fleet_records_applied_total") or 0.0
        last.append(applied)
        stable = len(last) > 20 and last[-21] == applied
        return applied >= at_least and stable and metric(router, "kvroute_fleet_peer_requests_open") == 0

    # One poll every 0.05s: 20 polls without news are the quiet second.
    eventually_sync(quiet, WAIT, interval=0.05, message=f"{router.base_url} to apply its peer's records")


def serve(router: Any, prompt: str) -> str:
    """One completion through `router`; the simulator pod that served it, once the router has completed it."""
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 2}).encode()
    request = urllib.request.Request(
        f"{router.base_url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        pod = response.headers["x-inference-pod"]
        response.read()
    eventually_sync(lambda: idle(router), WAIT, message="the request to complete in the router")
    return str(pod)


def prompt(tag: str, n: int) -> str:
    """Distinct from the first characters on (cold everywhere), several prefix blocks long."""
    return f"{tag}-{n:03d} " + f"a question about chapter {n} of the {tag} manual. " * 12


def scenario(a: Any, b: Any, tag: str, *, sync: bool) -> tuple[list[str], list[str]]:
    serve(b, prompt(tag, 0))
    if sync:
        settled(a, at_least=2)
    through_a = [serve(a, prompt(tag, n)) for n in range(1, 5)]
    if sync:
        settled(b, at_least=8)
    through_b = [serve(b, prompt(tag, n)) for n in range(1, 5)]
    return through_a, through_b


def test_with_fleet_sync_a_replica_routes_a_prefix_where_its_peer_did(
    sims: list[Any], routers: Callable[..., Any], spec_of: Callable[..., str]
) -> None:
    a, b = start_pair(routers, spec_of(sims), sync=True)

    through_a, through_b = scenario(a, b, "synced", sync=True)

    assert len(set(through_a)) == 4  # the four cold prompts spread over the pool
    assert through_b == through_a
    assert metric(a, "kvroute_fleet_batches_malformed_total") == metric(b, "kvroute_fleet_batches_malformed_total") == 0
    assert (metric(b, "kvroute_fleet_batches_received_total") or 0) > 0


def test_without_fleet_sync_each_replica_spreads_cold_prompts_by_its_own_lru(
    sims: list[Any], routers: Callable[..., Any], spec_of: Callable[..., str]
) -> None:
    a, b = start_pair(routers, spec_of(sims), sync=False)

    through_a, through_b = scenario(a, b, "unsynced", sync=False)

    assert len(set(through_a)) == 4
    assert through_b != through_a
    assert [pa == pb for pa, pb in zip(through_a, through_b, strict=True)] == [False] * 4
    assert metric(a, "kvroute_fleet_peers") is None  # sync is off: no fleet metrics at all


def test_a_dead_peers_in_flight_request_is_released_after_the_peer_timeout(
    sim_fleet: Any, routers: Callable[..., Any], spec_of: Callable[..., str]
) -> None:
    slow = sim_fleet.start("--model", MODEL, "--time-scale", "1.0")
    a, b = start_pair(routers, spec_of([slow]), sync=True, timeout="2s")
    body = json.dumps({"model": MODEL, "prompt": prompt("slow", 1), "max_tokens": 2000, "stream": True}).encode()
    request = urllib.request.Request(
        f"{a.base_url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as stream:
        assert stream.readline().startswith(b"data: ")
        eventually_sync(
            lambda: metric(b, "kvroute_fleet_peer_requests_open") == 1, WAIT, message="b to know a's request in flight"
        )

        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=10)
        killed = time.monotonic()
        eventually_sync(lambda: metric(b, "kvroute_fleet_peer_requests_open") == 0, 30, message="b to release it")
        released = time.monotonic() - killed

    assert metric(b, "kvroute_fleet_peers_expired_total") == 1
    assert metric(b, "kvroute_fleet_peers") == 0
    # The peer timeout (2 s) plus at most one expiry period (1 s), and some slack for a loaded machine.
    assert 1.5 <= released <= 10.0, released
