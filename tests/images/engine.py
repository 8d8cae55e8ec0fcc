"""The private Docker engine of the image tests (scripts/docker/) and the containers a test runs on it.

`Engine.start()` starts dockerd (installing Docker first if it is missing) unless it is already running; `stop()`
removes the containers this session ran and stops dockerd by PID if this session started it. `build(name)` builds
Dockerfile.<name> on the local base image, once per content (scripts/docker/build-image.sh).

Containers run as the chart runs them: the image's own user, a read-only root filesystem with a tmpfs on /tmp (the
chart's emptyDir), and the host's network, so that they reach, and are reached on, the 127.0.0.x addresses of the
test's other processes. Every address a test gives them is on 127.0.0.0/8.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import eventually_sync

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "docker"
# Debian's client: it has BuildKit (a newer client elsewhere on PATH may not).
DOCKER = "/usr/bin/docker"
IMAGES = ("router", "operator", "simulator")
CACHE = Path(os.environ.get("KVROUTE_CACHE", str(Path.home() / ".cache" / "kvroute"))) / "docker"


class EngineError(RuntimeError):
    """The Docker engine could not be started, or an image could not be built."""


def _script(name: str, *args: str, timeout: float) -> str:
    """Runs scripts/docker/NAME; its progress is copied to stderr as it comes. Returns the last line of stdout."""
    tail: deque[str] = deque(maxlen=40)
    try:
        with subprocess.Popen(
            ["bash", str(SCRIPTS / name), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        ) as process:
            assert process.stdout is not None and process.stderr is not None
            for line in process.stderr:
                sys.stderr.write(line)
                tail.append(line)
            output = process.stdout.read()
            process.wait(timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise EngineError(f"scripts/docker/{name}: {error}") from error
    if process.returncode != 0:
        raise EngineError(f"scripts/docker/{name} failed with exit code {process.returncode}:\n{''.join(tail)}")
    lines = output.strip().splitlines()
    if not lines:
        raise EngineError(f"scripts/docker/{name} printed nothing")
    return lines[-1]


def dockerd_pid() -> int | None:
    """The PID of the running private dockerd (from its pidfile), or None."""
    try:
        pid = int((CACHE / "run" / "dockerd.pid").read_text())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "dockerd" else None


@dataclass(frozen=True)
class Image:
    name: str
    tag: str
    size_bytes: int
    config: dict[str, Any]

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


@dataclass
class Engine:
    docker_host: str
    started_here: bool
    containers: list[Container] = field(default_factory=list)

    @classmethod
    def start(cls) -> Engine:
        if sys.platform != "linux" or os.geteuid() != 0:
            raise EngineError("the private Docker engine needs Linux and root (it runs dockerd by hand)")
        running = dockerd_pid() is not None
        return cls(_script("dockerd-start.sh", timeout=900), started_here=not running)

    def stop(self) -> None:
        """Removes this session's containers, then stops dockerd (by PID) if this session started it."""
        while self.containers:
            self.containers.pop().remove()
        if self.started_here:
            _script_quiet("dockerd-stop.sh")

    def docker(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": self.docker_host, "DOCKER_BUILDKIT": "1"}
        result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False, env=env)
        if check and result.returncode != 0:
            raise EngineError(f"docker {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
        return result

    def build(self, name: str) -> Image:
        """Dockerfile.NAME on the local base image (only BASE_IMAGE differs), built once per content."""
        tag = _script("build-image.sh", name, timeout=1800)
        (inspected,) = json.loads(self.docker("image", "inspect", tag).stdout)
        return Image(name, tag, int(inspected["Size"]), inspected["Config"])

    def run(self, image: Image, *args: str, entrypoint: str | None = None, options: tuple[str, ...] = ()) -> Container:
        """Starts `image` detached, as the chart runs it (its user, read-only root, tmpfs /tmp, host network)."""
        argv = ["run", "--detach", "--read-only", "--tmpfs", "/tmp", "--network", "host", *options]
        if entrypoint is not None:
            argv += ["--entrypoint", entrypoint]
        container_id = self.docker(*argv, image.tag, *args).stdout.strip()
        container = Container(self, container_id)
        self.containers.append(container)
        return container

    def run_once(self, image: Image, *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
        """Runs `image` to completion (removed afterwards), as `run` would; returns its exit code and output."""
        argv = ["run", "--rm", "--read-only", "--tmpfs", "/tmp", "--network", "none"]
        if entrypoint is not None:
            argv += ["--entrypoint", entrypoint]
        return self.docker(*argv, image.tag, *args, check=False)


def _script_quiet(name: str) -> None:
    subprocess.run(["bash", str(SCRIPTS / name)], capture_output=True, timeout=120, check=True)


@dataclass
class Container:
    engine: Engine
    id: str

    def inspect(self) -> dict[str, Any]:
        (inspected,) = json.loads(self.engine.docker("container", "inspect", self.id).stdout)
        return dict(inspected)

    @property
    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def uids(self) -> tuple[int, int]:
        """(real, effective) user id of the container's main process, read from the host's /proc."""
        pid = self.inspect()["State"]["Pid"]
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
        real, effective, *_ = (int(v) for v in line.split()[1:])
        return real, effective

    def wait_ready(self, ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Waits until `ready()` holds; fails at once, with the container's output, if the container exits."""

        def check() -> bool:
            if not self.running:
                raise RuntimeError(f"the container exited waiting for {what}:\n{self.logs()[-4000:]}")
            return ready()

        try:
            eventually_sync(check, timeout, interval=0.1, message=what)
        except AssertionError as error:
            raise AssertionError(f"{error}; the container's output:\n{self.logs()[-4000:]}") from None

    def logs(self) -> str:
        result = self.engine.docker("logs", self.id, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.engine.docker("exec", self.id, *command, check=False)

    def remove(self) -> None:
        """SIGTERM, SIGKILL after 10 s, then the container is deleted."""
        self.engine.docker("stop", "--time", "10", self.id, check=False, timeout=60)
        self.engine.docker("rm", "--force", self.id, check=False, timeout=60)


def answers(url: str) -> bool:
    """Whether GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
