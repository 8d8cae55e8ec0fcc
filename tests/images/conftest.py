"""The image tests' engine, images and control plane, made ready before the tests run.

After collection, if a selected test uses `images`, the private Docker engine is started and the three images are
built (`tests/images/engine.py`); if one uses `control_plane`, the e2e control plane's binaries are built too. A
cold start (debootstrap of the base image, three image builds, the Go build of the control plane) takes minutes,
so it is charged to no test's timeout; a warm one only checks content keys. Progress goes straight to the terminal,
then one line with the images' sizes. Without Docker (or root), the tests are skipped locally and fail in CI. At the
end of the session this session's containers are removed and dockerd, if this session started it, is stopped by
PID (with the bridge and iptables rules it left).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e.controlplane.binaries import ControlPlaneError, build_binaries
from e2e.controlplane.cluster import ControlPlane

from tests.images.engine import IMAGES, Container, Engine, EngineError, Image

_ENGINE = pytest.StashKey[Engine]()
_IMAGES = pytest.StashKey[dict[str, Image]]()
_ERROR = pytest.StashKey[str]()
_BIN_DIR = pytest.StashKey[Path]()
_BIN_ERROR = pytest.StashKey[str]()


def _write_line(config: pytest.Config, line: str) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        config.pluginmanager.getplugin("terminalreporter").write_line(line)


def _prepare_images(config: pytest.Config) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    started = time.monotonic()
    try:
        with capture.global_and_fixture_disabled():
            engine = Engine.start()
            config.stash[_ENGINE] = engine
            images = {name: engine.build(name) for name in IMAGES}
    except EngineError as error:
        config.stash[_ERROR] = str(error)
        return
    config.stash[_IMAGES] = images
    sizes = ", ".join(f"{image.tag} {image.size_mb:.0f} MB" for image in images.values())
    _write_line(config, f"images ready in {time.monotonic() - started:.1f}s: {sizes}")


def _prepare_control_plane(config: pytest.Config) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    try:
        with capture.global_and_fixture_disabled():
            config.stash[_BIN_DIR] = build_binaries()
    except ControlPlaneError as error:
        config.stash[_BIN_ERROR] = str(error)


def pytest_collection_finish(session: pytest.Session) -> None:
    used = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if "images" in used:
        _prepare_images(session.config)
    if "control_plane" in used:
        _prepare_control_plane(session.config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    engine = session.config.stash.get(_ENGINE, None)
    if engine is not None:
        engine.stop()


def _unavailable(what: str, error: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} unavailable: {error}", pytrace=False)
    pytest.skip(f"{what} unavailable: {error.splitlines()[0]}")


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> Engine:
    """The running Docker engine (started after collection)."""
    config = request.config
    if _ENGINE not in config.stash and _ERROR not in config.stash:
        _prepare_images(config)
    if _ERROR in config.stash:
        _unavailable("Docker", config.stash[_ERROR])
    return config.stash[_ENGINE]


@pytest.fixture(scope="session")
def images(engine: Engine, request: pytest.FixtureRequest) -> dict[str, Image]:
    """`router`, `operator` and `simulator`, built from the repository's Dockerfiles on the local base image."""
    return request.config.stash[_IMAGES]


@pytest.fixture
def run_container(engine: Engine) -> Iterator[Callable[..., Container]]:
    """`Engine.run` for one test: its containers are removed when the test ends."""
    started: list[Container] = []

    def run(image: Image, *args: str, **options: object) -> Container:
        container = engine.run(image, *args, **options)  # type: ignore[arg-type]
        started.append(container)
        return container

    try:
        yield run
    finally:
        for container in started:
            container.remove()
            engine.containers.remove(container)


@pytest.fixture(scope="module")
def control_plane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The e2e control plane (etcd, kube-apiserver, controllers, kwok) on 127.0.0.1, for the operator image."""
    config = request.config
    if _BIN_DIR not in config.stash and _BIN_ERROR not in config.stash:
        _prepare_control_plane(config)
    if _BIN_ERROR in config.stash:
        _unavailable("the e2e control plane", config.stash[_BIN_ERROR])
    cluster = ControlPlane(config.stash[_BIN_DIR], tmp_path_factory.mktemp("controlplane"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
