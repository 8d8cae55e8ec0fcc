"""The e2e suite's control plane: built once before the tests run, started once per session.

The build (``controlplane/build.sh``; tens of minutes the first time, a stamp check afterwards) runs after
collection and only if a selected test uses ``control_plane``, so it is not charged to any test's timeout and
``pytest -m "not e2e"`` never triggers it. Its progress goes straight to the terminal. Without Go, or if the build
fails, the e2e tests are skipped locally and fail in CI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .controlplane.binaries import ControlPlaneError, build_binaries
from .controlplane.cluster import ControlPlane

_BIN_DIR = pytest.StashKey[Path]()
_BUILD_ERROR = pytest.StashKey[str]()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _build(config: pytest.Config) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    started = time.monotonic()
    try:
        with capture.global_and_fixture_disabled():
            config.stash[_BIN_DIR] = build_binaries()
    except ControlPlaneError as error:
        config.stash[_BUILD_ERROR] = str(error)
    else:
        _report(config, f"e2e control plane binaries ready in {time.monotonic() - started:.1f}s")


def _report(config: pytest.Config, line: str) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        config.pluginmanager.getplugin("terminalreporter").write_line(line)


def pytest_collection_finish(session: pytest.Session) -> None:
    if any("control_plane" in getattr(item, "fixturenames", ()) for item in session.items):
        _build(session.config)


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running cluster (see ``controlplane/cluster.py``), shared by the whole session."""
    config = request.config
    if _BIN_DIR not in config.stash and _BUILD_ERROR not in config.stash:
        _build(config)
    error = config.stash.get(_BUILD_ERROR, None)
    if error is not None:
        if _in_ci():
            pytest.fail(f"e2e control plane unavailable: {error}", pytrace=False)
        pytest.skip(f"e2e control plane unavailable: {error.splitlines()[0]}")
    cluster = ControlPlane(config.stash[_BIN_DIR], tmp_path_factory.mktemp("controlplane"))
    started = time.monotonic()
    cluster.start()
    elapsed = time.monotonic() - started
    _report(config, f"e2e control plane started in {elapsed:.1f}s at {cluster.api_url}, logs in {cluster.log_dir}")
    try:
        yield cluster
    finally:
        exited = cluster.exited()
        logs = cluster.logs() if exited else ""
        cluster.stop()
    if exited:
        pytest.fail(f"{', '.join(exited)} exited during the session:\n{logs}", pytrace=False)
