"""What discovery asks of the API server, on kubernetes_asyncio: get, paginated list and watch, by URL path.

Objects are plain JSON dicts, so core resources (pods, ConfigMaps) and custom ones (InferencePools) are read the
same way, through the library's `ApiClient.call_api` (which adds the credentials and refreshes them, see
`credentials`). A non-2xx answer raises `ApiError` with the status and the API server's message; `ApiError.gone`
(HTTP 410) means the resource version asked for is too old and the caller must list again. Credentials that
cannot be had (an exec plugin that fails) raise `ApiError` 401 with the reason.

A watch is the library's `Watch` over one request with `allowWatchBookmarks`; it yields `WatchEvent`s (`ADDED`,
`MODIFIED`, `DELETED`, `BOOKMARK`). An `ERROR` event in the stream raises `ApiError` with the code of the
`Status` it carries. A watch that the server ends (its `timeoutSeconds` passed) simply stops iterating; a
connection that breaks raises `aiohttp.ClientError`, a malformed event `aiohttp.ClientPayloadError`.

The library's client opens an aiohttp session, so it is created on first use (in the running loop) and closed
by `close()`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, ApiException
from kubernetes_asyncio.config import ConfigException
from kubernetes_asyncio.watch import Watch

from kvroute.router.datalayer.kubernetes.credentials import Cluster

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
USER_AGENT = "kvroute-router"
AUTH = ["BearerToken"]  # the library's name for the Authorization header it fills in

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
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._api: ApiClient | None = None

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
        self._api = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Object:
        try:
            body = await self._open().call_api(
                path,
                "GET",
                query_params=list((params or {}).items()),
                header_params={"Accept": "application/json"},
                response_types_map={200: "object"},
                auth_settings=AUTH,
                _return_http_data_only=True,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            raise _api_error(exc) from None
        except ConfigException as exc:
            raise ApiError(401, f"no credentials: {exc}", "Unauthorized") from None
        if not isinstance(body, dict):
            raise ApiError(500, "the response is not a JSON object")
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
        api = self._open()

        async def request(**_: Any) -> aiohttp.ClientResponse:  # what `Watch` calls (with its own arguments)
            try:
                response: aiohttp.ClientResponse = await api.call_api(
                    path,
                    "GET",
                    query_params=list(params.items()),
                    header_params={"Accept": "application/json"},
                    auth_settings=AUTH,
                    _preload_content=False,
                    _request_timeout=timeout,
                )
            except ConfigException as exc:
                raise ApiError(401, f"no credentials: {exc}", "Unauthorized") from None
            if response.status >= 300:
                text = await response.text(errors="replace")
                response.release()
                raise _status_error(response.status, text)
            return response

        stream = Watch()
        try:
            # `timeout_seconds` tells the library to end with the server's watch instead of reconnecting itself.
            async for event in stream.stream(request, timeout_seconds=timeout_seconds):
                yield _event(event)
        except ApiException as exc:
            raise _api_error(exc) from None
        except (ApiError, aiohttp.ClientError, TimeoutError):
            raise
        except Exception as exc:  # the library's own complaint about an event without type or object
            raise aiohttp.ClientPayloadError(f"malformed watch event: {exc}") from None
        finally:
            await stream.close()

    def _open(self) -> ApiClient:
        if self._api is None:
            self._api = ApiClient(self.cluster.configuration)
            self._api.user_agent = USER_AGENT
        return self._api


def _selectors(label_selector: str | None, field_selector: str | None) -> dict[str, str]:
    params: dict[str, str] = {}
    if label_selector:
        params["labelSelector"] = label_selector
    if field_selector:
        params["fieldSelector"] = field_selector
    return params


def _status_error(status: int, text: str) -> ApiError:
    """The `Status` object the API server answers errors with, as an `ApiError` carrying its message."""
    message, reason = text[:500], ""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("message") or message)
        reason = str(body.get("reason") or "")
    return ApiError(status, message, reason)


def _api_error(exc: ApiException) -> ApiError:
    if exc.body:
        return _status_error(exc.status, str(exc.body))
    # An ERROR event in a watch: the library puts "<reason>: <message>" of its Status in `reason`.
    reason, _, message = str(exc.reason or "").partition(": ")
    return ApiError(exc.status or 500, message or reason, reason if message else "")


def _event(decoded: Any) -> WatchEvent:
    if not isinstance(decoded, dict):
        raise aiohttp.ClientPayloadError("a watch event is not valid JSON")
    kind, obj = decoded.get("type"), decoded.get("raw_object")
    if not isinstance(obj, dict):
        raise aiohttp.ClientPayloadError("a watch event has no object")
    if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
        raise aiohttp.ClientPayloadError(f"unknown watch event type {kind!r}")
    return WatchEvent(kind, obj)
