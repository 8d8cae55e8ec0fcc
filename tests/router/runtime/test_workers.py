"""`kvroute router --workers 2` as a user runs it, in front of real simulators: one port, one routing state, one
metrics page, one reload, a crashed worker replaced, a clean stop."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvroute.router.config.recommended import recommended_config_text
from tests.conftest import SimFleet
from tests.router.proxy.conftest import RouterFleet, RouterProcess, endpoints_spec
from tests.support.polling import eventually_sync

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("worker", timeout=5)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self._path)


def worker_metrics(directory: Path, index: int) -> str:
    """Worker `index`'s own metrics page, from its control socket."""
    connection = _UnixConnection(str(directory / f"worker-{index}.sock"))
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def sample(page: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", page, re.MULTILINE)
    return 0.0 if match is None else float(match.group(1))


def get(url: str, path: str, body: bytes | None = None, method: str = "GET") -> tuple[int, bytes]:
    host, _, port = url.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)  # a new connection: any worker may take it
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def complete(router: RouterProcess, prompt: str) -> dict[str, object]:
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 2}).encode()
    status, answer = get(router.base_url, "/v1/completions", body, "POST")
    assert status == 200, answer
    result: dict[str, object] = json.loads(answer)
    return result


def directory_of(router: RouterProcess) -> Path:
    found = eventually_sync(
        lambda: re.search(r"router running 2 workers; directory (\S+)", router.output()), 10, message="the workers"
    )
    return Path(found.group(1))


@pytest.fixture
def routers() -> Iterator[RouterFleet]:
    with RouterFleet() as fleet:
        yield fleet


@pytest.fixture
def workers(sim_fleet: SimFleet, routers: RouterFleet, tmp_path: Path) -> tuple[RouterProcess, Path]:
    sims = [sim_fleet.start("--time-scale", "50") for _ in range(2)]
    config = tmp_path / "kvroute.yaml"
    config.write_text(recommended_config_text())
    admin = socket.socket()
    admin.bind(("127.0.0.1", 0))
    admin_port = admin.getsockname()[1]
    admin.close()
    router = routers(endpoints_spec(sims), "--workers", "2", "--admin-port", str(admin_port), config=config)
    router.admin_port = admin_port  # type: ignore[attr-defined]
    directory = directory_of(router)

    def both_synced() -> bool:
        try:
            pages = [worker_metrics(directory, i) for i in (0, 1)]
        except OSError:
            return False  # a worker still starting
        return all(sample(page, "kvroute_fleet_peers") == 1 for page in pages)

    eventually_sync(both_synced, 20, interval=0.2, message="both workers to hear each other")
    return router, directory


def test_two_workers_share_the_port_and_one_routing_state(workers: tuple[RouterProcess, Path]) -> None:
    router, directory = workers
    shared = "You are a careful assistant who answers in one short sentence. " * 30

    served = [complete(router, f"{shared} question {i}") for i in range(24)]

    pages = [worker_metrics(directory, i) for i in (0, 1)]
    per_worker = [sample(page, "kvroute_requests_total", '{api="completions",code="200"}') for page in pages]
    assert sum(per_worker) == 24 and min(per_worker) >= 1, per_worker  # the kernel spread the connections
    applied = [sample(page, "kvroute_fleet_records_applied_total") for page in pages]
    assert min(applied) >= 1, applied  # each worker applied the other's routing records
    # One routing state: the shared prefix stays on the endpoint that first got it, whichever worker routes.
    decisions = re.findall(r'^kvroute_scheduler_decisions_total\{endpoint="([^"]+)"', "".join(pages), re.MULTILINE)
    assert len(set(decisions)) == 1, decisions
    assert all(answer["choices"] for answer in served)


def test_the_metrics_page_merges_the_workers(workers: tuple[RouterProcess, Path]) -> None:
    router, directory = workers
    for i in range(10):
        complete(router, f"merge {i} " * 40)

    status, page = get(router.base_url, "/metrics")

    assert status == 200
    text = page.decode()
    own = [worker_metrics(directory, i) for i in (0, 1)]
    labels = '{api="completions",code="200"}'
    assert sample(text, "kvroute_router_workers") == 2
    total = sample(text, "kvroute_requests_total", labels)
    assert total == sum(sample(page, "kvroute_requests_total", labels) for page in own)
    assert total >= 10


def test_one_admin_reload_reloads_every_worker(workers: tuple[RouterProcess, Path]) -> None:
    router, _ = workers
    success = '{result="success"}'
    before = sample(get(router.base_url, "/metrics")[1].decode(), "kvroute_config_reloads_total", success)
    admin = f"http://127.0.0.1:{router.admin_port}"  # type: ignore[attr-defined]

    status, answer = get(admin, "/admin/reload", b"", "POST")

    assert status == 200, answer
    assert json.loads(answer)["workers"] == {"failed": []}
    after = sample(get(router.base_url, "/metrics")[1].decode(), "kvroute_config_reloads_total", success)
    assert after == before + 2


def test_a_worker_that_dies_is_replaced_and_sigterm_stops_everything(workers: tuple[RouterProcess, Path]) -> None:
    router, directory = workers
    pids = [int(p) for p in re.findall(r"worker \d started \(pid (\d+)\)", router.output())]
    assert len(pids) == 2

    os.kill(pids[0], signal.SIGKILL)
    eventually_sync(lambda: "worker 0 started" in router.output().split("exited with -9")[-1], 15, message="restart")

    def both_serve() -> bool:
        try:  # connections queued on the killed worker's socket were reset with it
            return sample(get(router.base_url, "/metrics")[1].decode(), "kvroute_router_workers") == 2
        except OSError:
            return False

    eventually_sync(both_serve, 20, message="the replacement worker in the merged page")
    assert complete(router, "after the restart " * 20)["choices"]

    os.kill(router.pid, signal.SIGTERM)
    assert router.wait(30) == 0
    assert not directory.exists()
    restarted = int(re.findall(r"worker 0 started \(pid (\d+)\)", router.output())[-1])
    for pid in (pids[1], restarted):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_refuse_a_port_chosen_per_process() -> None:
    from tests.router.test_cli import run

    result = run("--endpoints", "127.0.0.2:8000", "--workers", "2", "--port", "0")

    assert result.returncode == 2
    assert "--workers 2 needs a fixed --port" in result.stderr


def test_workers_refuse_a_kv_events_address_only_one_process_can_bind(tmp_path: Path) -> None:
    from tests.router.test_cli import run

    config = tmp_path / "precise.yaml"
    config.write_text(
        "apiVersion: kvroute.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        "  - type: precise-prefix-cache-scorer\n    parameters:\n      kvEvents:\n        bind: tcp://127.0.0.1:5557\n"
        "schedulingProfiles:\n  - name: default\n    plugins:\n      - pluginRef: precise-prefix-cache-scorer\n"
    )
    started = time.monotonic()

    result = run("--endpoints", "127.0.0.2:8000", "--workers", "2", "--port", "18999", "--config", str(config))

    assert result.returncode == 2, result.stderr
    assert "only one process can" in result.stderr
    assert time.monotonic() - started < 30
