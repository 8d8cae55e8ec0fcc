"""A fake Kubernetes API server (aiohttp, in-process, on 127.0.0.1) to test the discovery client in isolation.

It holds namespaced collections in memory and serves what the router uses: get, list (with `limit`/`continue`,
`fieldSelector=metadata.name=X` and equality `labelSelector` terms), and watch from a resourceVersion with
`ADDED`/`MODIFIED`/`DELETED` events, bookmarks on demand, and an object that stops (or starts) matching the
watch's selectors arriving as `DELETED` (or `ADDED`), as the real API server does. Knobs: `compact()` makes older
resource versions answer 410 Gone (as an HTTP status or as an `ERROR` event in the stream), `drop_watches()` cuts
every open watch connection mid-stream, `fail_next` answers the next requests with the given statuses, `token`
requires a bearer token. Every request is recorded in `requests`.

The real control plane is exercised by `e2e/test_router_kubernetes.py`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes_asyncio.client import Configuration

from kvroute.router.datalayer.kubernetes.api import KubeClient
from kvroute.router.datalayer.kubernetes.credentials import Cluster

Object = dict[str, Any]
_DROP = object()


@dataclass
class Recorded:
    method: str
    path: str
    query: Mapping[str, str]
    authorization: str | None


@dataclass(eq=False)
class _Watch:
    path: str
    query: Mapping[str, str]
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


def _matches(obj: Object | None, query: Mapping[str, str]) -> bool:
    if obj is None:
        return False
    metadata = obj.get("metadata", {})
    name_selector = query.get("fieldSelector", "")
    if name_selector.startswith("metadata.name=") and metadata.get("name") != name_selector.split("=", 1)[1]:
        return False
    labels = metadata.get("labels") or {}
    for term in filter(None, query.get("labelSelector", "").split(",")):
        key, sep, value = term.partition("=")
        if sep and " " not in term and labels.get(key) != value:
            return False
    return True


class FakeApiServer:
    def __init__(self) -> None:
        self.collections: dict[str, dict[str, Object]] = {}
        self.resource_version = 100
        self.compacted_below = 0
        self.gone_as_event = True
        self.fail_next: list[int] = []
        self.token: str | None = None
        self.requests: list[Recorded] = []
        self._watches: set[_Watch] = set()
        self._history: list[tuple[int, str, Object | None, Object | None]] = []
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def client(self, token: str | None = None) -> KubeClient:
        configuration = Configuration(host=self.url)
        if token is not None:
            configuration.api_key["BearerToken"] = f"Bearer {token}"
        return KubeClient(Cluster(configuration))

    # Changing the collections.

    def put(self, path: str, obj: Object) -> Object:
        """Create or replace `obj` in the collection at `path`; returns the stored copy."""
        self.resource_version += 1
        stored = copy.deepcopy(obj)
        stored.setdefault("metadata", {})["resourceVersion"] = str(self.resource_version)
        items = self.collections.setdefault(path, {})
        old = items.get(stored["metadata"]["name"])
        items[stored["metadata"]["name"]] = stored
        self._record(path, old, stored)
        return stored

    def delete(self, path: str, name: str) -> None:
        self.resource_version += 1
        old = self.collections.get(path, {}).pop(name)
        self._record(path, old, None)

    def compact(self) -> None:
        """Every resource version before the current one is gone: watches from them get 410."""
        self.compacted_below = self.resource_version

    def bookmark(self) -> None:
        self.resource_version += 1
        for watch in self._watches:
            if watch.query.get("allowWatchBookmarks") == "true":
                rv = str(self.resource_version)
                watch.queue.put_nowait({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": rv}}})

    def drop_watches(self) -> None:
        for watch in self._watches:
            watch.queue.put_nowait(_DROP)

    def open_watches(self, path: str) -> int:
        return sum(1 for watch in self._watches if watch.path == path)

    def queries(self, path: str, *, watch: bool) -> list[Mapping[str, str]]:
        return [r.query for r in self.requests if r.path == path and (r.query.get("watch") == "1") == watch]

    def _record(self, path: str, old: Object | None, new: Object | None) -> None:
        self._history.append((self.resource_version, path, old, new))
        for watch in self._watches:
            if watch.path == path and (event := _event_for(watch.query, old, new)) is not None:
                watch.queue.put_nowait(event)

    # Serving.

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append(Recorded("GET", request.path, query, request.headers.get("Authorization")))
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "no valid bearer token")
        if self.fail_next:
            return _status(self.fail_next.pop(0), "InternalError", "failing on purpose")
        collection, name = _split(request.path)
        if collection is None:
            return _status(404, "NotFound", f"{request.path} not found")
        if name is None:
            if query.get("watch") == "1":
                return await self._watch(request, collection, query)
            return self._list(collection, query)
        obj = self.collections.get(collection, {}).get(name)
        if obj is None:
            return _status(404, "NotFound", f"{request.path} not found")
        return web.json_response(obj)

    def _list(self, path: str, query: Mapping[str, str]) -> web.Response:
        items = [obj for obj in self.collections.get(path, {}).values() if _matches(obj, query)]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or len(items) or 1)
        page = items[start : start + limit]
        metadata: Object = {"resourceVersion": str(self.resource_version)}
        if start + limit < len(items):
            metadata["continue"] = str(start + limit)
        return web.json_response({"kind": "List", "metadata": metadata, "items": page})

    async def _watch(self, request: web.Request, path: str, query: Mapping[str, str]) -> web.StreamResponse:
        since = int(query.get("resourceVersion") or self.resource_version)
        gone = since < self.compacted_below
        if gone and not self.gone_as_event:
            return _status(410, "Expired", f"too old resource version: {since}")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if gone:
            error = {"kind": "Status", "code": 410, "reason": "Expired", "message": f"too old: {since}"}
            await response.write(json.dumps({"type": "ERROR", "object": error}).encode() + b"\n")
            await response.write_eof()
            return response
        watch = _Watch(path, query)
        for version, event_path, old, new in self._history:
            if version > since and event_path == path and (event := _event_for(query, old, new)) is not None:
                watch.queue.put_nowait(event)
        self._watches.add(watch)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + int(query.get("timeoutSeconds") or 300)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(watch.queue.get(), deadline - loop.time())
                except TimeoutError:
                    break
                if item is _DROP:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await response.write(json.dumps(item).encode() + b"\n")
        finally:
            self._watches.discard(watch)
        await response.write_eof()
        return response


def _split(path: str) -> tuple[str | None, str | None]:
    """(collection path, object name or None) of a namespaced resource URL; (None, None) for anything else."""
    parts = path.strip("/").split("/")
    base = 3 if parts[0] == "api" else 4  # /api/v1/namespaces/NS/PLURAL or /apis/GROUP/VERSION/namespaces/NS/...
    if len(parts) not in (base + 2, base + 3) or parts[base - 1] != "namespaces":
        return None, None
    return "/" + "/".join(parts[: base + 2]), parts[base + 2] if len(parts) == base + 3 else None


def _event_for(query: Mapping[str, str], old: Object | None, new: Object | None) -> Object | None:
    before, after = _matches(old, query), _matches(new, query)
    if after:
        return {"type": "MODIFIED" if before else "ADDED", "object": new}
    if before:
        assert old is not None
        gone = copy.deepcopy(old)
        if new is not None:
            gone["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"]
        return {"type": "DELETED", "object": gone}
    return None


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": message}
    return web.json_response(body, status=code)


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.server.start_server()
    try:
        yield server
    finally:
        server.drop_watches()
        await server.server.close()


def _openssl(directory: Path, command: str) -> None:
    subprocess.run(["openssl", *command.split()], cwd=directory, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a throw-away CA (`ca.crt`), a serving certificate for 127.0.0.1 (`server.crt`, `.key`)
    and a client certificate (`client.crt`, `.key`), all PEM."""
    if shutil.which("openssl") is None:
        message = "the openssl command is needed to make test certificates"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    directory = tmp_path_factory.mktemp("certs")
    key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    ca_extensions = "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
    _openssl(directory, f"req -x509 {key} -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca {ca_extensions}")
    for name, usage in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (directory / f"{name}.ext").write_text(f"{usage}\nbasicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n")
        _openssl(directory, f"req {key} -keyout {name}.key -out {name}.csr -subj /CN=test-{name}")
        sign = "-CA ca.crt -CAkey ca.key -CAcreateserial -days 2"
        _openssl(directory, f"x509 -req -in {name}.csr {sign} -out {name}.crt -extfile {name}.ext")
    return directory


async def _tls_server(certs: Path, client_certificate: bool) -> AsyncIterator[FakeApiServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs / "ca.crt"))
    context.load_cert_chain(str(certs / "server.crt"), str(certs / "server.key"))
    context.verify_mode = ssl.CERT_REQUIRED if client_certificate else ssl.CERT_NONE
    server = FakeApiServer()
    await server.server.start_server(ssl=context)
    try:
        yield server
    finally:
        server.drop_watches()
        await server.server.close()


@pytest.fixture
async def tls_api(certs: Path) -> AsyncIterator[FakeApiServer]:
    """The fake API server over TLS, demanding a client certificate signed by the test CA."""
    async for server in _tls_server(certs, client_certificate=True):
        yield server


@pytest.fixture
async def https_api(certs: Path) -> AsyncIterator[FakeApiServer]:
    """The fake API server over TLS, without client certificates (for bearer tokens)."""
    async for server in _tls_server(certs, client_certificate=False):
        yield server


def _pod(
    name: str,
    ip: str | None = "127.0.0.10",
    *,
    labels: Mapping[str, str] | None = None,
    ready: bool = True,
    terminating: bool = False,
    namespace: str = "ns",
) -> Object:
    """A pod object as the API server returns it (only the fields discovery reads, plus some it must ignore)."""
    metadata: Object = {"name": name, "namespace": namespace, "labels": dict(labels or {"app": "llm"})}
    if terminating:
        metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    status: Object = {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ],
    }
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {"containers": []}, "status": status}


def _inference_pool(
    name: str = "llm", *, match_labels: Mapping[str, str] | None = None, ports: tuple[int, ...] = (8000,)
) -> Object:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "selector": {"matchLabels": dict(match_labels or {"app": "llm"})},
            "targetPorts": [{"number": port} for port in ports],
            "endpointPickerRef": {"name": f"{name}-epp", "port": {"number": 9002}},
        },
    }


@pytest.fixture
def make_pod() -> Any:
    return _pod


@pytest.fixture
def make_pool() -> Any:
    return _inference_pool
