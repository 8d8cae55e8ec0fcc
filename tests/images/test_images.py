"""The three images as built from the repository's Dockerfiles (on the local base image): their user, entry point,
read-only root filesystem, and that each carries only the part it runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.images.engine import Container, Engine, Image, answers
from tests.support import free_port

pytestmark = pytest.mark.integration

UID = 65532
ENTRYPOINTS = {
    "router": ["kvroute", "router"],
    "operator": ["kvroute", "operator", "run"],
    "simulator": ["kvroute", "sim", "serve"],
}
# The parts of kvroute importable in each image (and pip, which the final stage removes).
CARRIED = {
    "router": {"kvroute.router"},
    "operator": {"kvroute.router", "kvroute.operator"},
    "simulator": {"kvroute.router", "kvroute.simulator"},
}
PROBED = ("kvroute.router", "kvroute.operator", "kvroute.simulator", "kvroute.bench", "pip", "setuptools")


@pytest.mark.parametrize("name", ["router", "operator", "simulator"])
def test_image_runs_its_command_as_the_unprivileged_user(images: dict[str, Image], name: str) -> None:
    image = images[name]

    assert image.config["User"] == f"{UID}:{UID}"
    assert image.config["Entrypoint"] == ENTRYPOINTS[name]
    print(f"{image.tag}: {image.size_mb:.0f} MB")


@pytest.mark.parametrize("name", ["router", "operator", "simulator"])
def test_image_carries_only_its_part_and_no_pip(engine: Engine, images: dict[str, Image], name: str) -> None:
    probe = f"import importlib.util as u; print(*[m for m in {PROBED!r} if u.find_spec(m)], sep=',')"
    result = engine.run_once(images[name], "-c", probe, entrypoint="python")

    assert result.returncode == 0, result.stderr
    assert set(result.stdout.strip().split(",")) == CARRIED[name]


def test_the_router_image_lists_only_its_commands_and_refuses_the_others(
    engine: Engine, images: dict[str, Image]
) -> None:
    listed = engine.run_once(images["router"], "--help", entrypoint="kvroute")
    refused = engine.run_once(images["router"], "sim", "serve", entrypoint="kvroute")

    assert listed.returncode == 0, listed.stderr
    commands = {line.split()[0] for line in listed.stdout.splitlines() if line.startswith("    ") and line.split()}
    assert commands == {"router", "sidecar"}
    assert refused.returncode == 2
    assert "`kvroute sim` is not installed here (kvroute.simulator is missing)" in refused.stderr


def test_the_root_filesystem_is_read_only_and_tmp_is_writable(
    run_container: Callable[..., Container], images: dict[str, Image]
) -> None:
    host = "127.0.31.1"
    port = free_port(host)
    container = run_container(images["simulator"], "--host", host, "--port", str(port))
    container.wait_ready(lambda: answers(f"http://{host}:{port}/health"), "the simulator's /health")
    writes = {path: container.exec("python", "-c", f"open({path!r}, 'w').write('x')") for path in ("/x", "/tmp/x")}

    assert container.uids() == (UID, UID)
    assert writes["/x"].returncode != 0
    assert "Read-only file system" in writes["/x"].stderr
    assert writes["/tmp/x"].returncode == 0, writes["/tmp/x"].stderr
