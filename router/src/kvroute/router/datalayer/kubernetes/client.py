"""A small asynchronous Kubernetes API client: get, paginated list and watch streams, on one aiohttp session.

Only what discovery needs. Responses are plain JSON dicts. A non-2xx answer raises `ApiError` with the status
and the API server's message; `ApiError.gone` (HTTP 410) means the resource version asked for is too old and
the caller must list again. A watch yields `WatchEvent`s (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`); an `ERROR`
event in the stream raises `ApiError` with the code of the `Status` it carries. A watch that the server ends
(its `timeoutSeconds` passed) simply stops iterating; a connection that breaks raises `aiohttp.ClientError`.

The session is opened on first use (it needs the running loop) and closed by `close()`. A token file is re-read
once a minute, so a rotated service account token is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from kvroute.router.datalayer.kubernetes.kubeconfig import ClusterConfig

TOKEN_REFRESH_SECONDS = 60.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
MAX_EVENT_BYTES = 16 * 1024 * 1024  # one watch event; ConfigMaps alone may hold 1 MiB
USER_AGENT = "kvroute-router"

Object = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"HTTP {status}{' ' + reason if reason else ''}: {message}")

    @property
    def gone(self) -> bool:
        return self.status == 410


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED or BOOKMARK
    object: Object


def collection_path(namespace: str, plural: str, group: str = "", version: str = "v1") -> str:
    """The URL path of a namespaced collection: core (`group=""`) or an API group."""
    prefix = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    return f"{prefix}/namespaces/{namespace}/{plural}"


class KubeClient:
    def __init__(self, config: ClusterConfig, *, session: aiohttp.ClientSession | None = None) -> None:
        self.config = config
        self._session = session
        self._owns_session = session is None
        self._token = config.token
        self._token_read_at = float("-inf")

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Object:
        session = self._open()
        async with session.get(
            self.config.server + path, params=params, headers=await self._headers(), timeout=REQUEST_TIMEOUT
        ) as response:
            await _raise_for_status(response)
            body = await response.json()
        if not isinstance(body, dict):
            raise ApiError(response.status, "the response is not a JSON object")
        return body

    async def list(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
    ) -> tuple[list[Object], str]:
        """All items of a collection (following `continue` tokens) and the list's resourceVersion."""
        params = _selectors(label_selector, field_selector)
        params["limit"] = str(page_size)
        items: list[Object] = []
        while True:
            page = await self.get(path, params)
            items.extend(item for item in page.get("items") or () if isinstance(item, dict))
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                return items, str(metadata.get("resourceVersion", ""))
            params["continue"] = token

    async def watch(
        self,
        path: str,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Changes after `resource_version`, with bookmarks, until the server ends the watch."""
        params = _selectors(label_selector, field_selector)
        params.update(
            watch="1",
            resourceVersion=resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(timeout_seconds),
        )
        # No event for longer than the server's own timeout means the connection is dead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30)
        session = self._open()
        async with session.get(
            self.config.server + path, params=params, headers=await self._headers(), timeout=timeout
        ) as response:
            await _raise_for_status(response)
            async for line in _lines(response.content):
                yield _event(line)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.config.ssl_context or False)
            self._session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT})
        return self._session

    async def _headers(self) -> dict[str, str]:
        file = self.config.token_file
        if file is not None and time.monotonic() - self._token_read_at > TOKEN_REFRESH_SECONDS:
            try:
                self._token = (await asyncio.to_thread(file.read_text, encoding="utf-8")).strip()
            except (OSError, UnicodeDecodeError) as exc:
                if self._token is None:
                    raise ApiError(401, f"cannot read the token file {file}: {exc}") from None
            self._token_read_at = time.monotonic()
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers


def _selectors(label_selector: str | None, field_selector: str | None) -> dict[str, str]:
    params: dict[str, str] = {}
    if label_selector:
        params["labelSelector"] = label_selector
    if field_selector:
        params["fieldSelector"] = field_selector
    return params


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status < 300:
        return
    text = await response.text(errors="replace")
    message, reason = text[:500], ""
    try:
        status = json.loads(text)
    except ValueError:
        status = None
    if isinstance(status, dict):
        message = str(status.get("message") or message)
        reason = str(status.get("reason") or "")
    raise ApiError(response.status, message, reason)


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Newline-separated records of any length up to `MAX_EVENT_BYTES` (aiohttp's readline caps lines at 128 KiB)."""
    buffer = bytearray()
    async for chunk in stream.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield line
        if len(buffer) > MAX_EVENT_BYTES:
            raise aiohttp.ClientPayloadError(f"a watch event is larger than {MAX_EVENT_BYTES} bytes")
    if buffer.strip():
        yield bytes(buffer)


def _event(line: bytes) -> WatchEvent:
    try:
        decoded = json.loads(line)
    except ValueError:
        raise aiohttp.ClientPayloadError("a watch event is not valid JSON") from None
    if not isinstance(decoded, dict) or not isinstance(decoded.get("object"), dict):
        raise aiohttp.ClientPayloadError("a watch event has no object")
    kind, obj = decoded.get("type"), decoded["object"]
    if kind == "ERROR":
        code = obj.get("code")
        raise ApiError(code if isinstance(code, int) else 500, str(obj.get("message", "")), str(obj.get("reason", "")))
    if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
        raise aiohttp.ClientPayloadError(f"unknown watch event type {kind!r}")
    return WatchEvent(kind, obj)
