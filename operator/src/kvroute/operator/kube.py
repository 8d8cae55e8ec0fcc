"""A small asynchronous Kubernetes API client for what the operator writes: get, list, server-side apply, status.

It authenticates with the same credentials kopf logs in with (`kopf.ConnectionInfo`), obtained from a `login`
callable; on 401 it logs in again once and retries (tokens of service accounts rotate).

Writes are server-side applies under one field manager: the operator owns exactly the fields of the manifests it
applies, `force` takes them back from whoever changed them, and fields it does not send are left to others.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from kvroute.operator.settings import FIELD_MANAGER

Login = Callable[[], kopf.ConnectionInfo]


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core API
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{base}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


INFERENCE_POOL = Kind("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool")
SCHEDULING_PROFILE = Kind("kvroute.io", "v1alpha1", "schedulingprofiles", "SchedulingProfile")
CONFIG_MAP = Kind("", "v1", "configmaps", "ConfigMap")
SERVICE = Kind("", "v1", "services", "Service")
SERVICE_ACCOUNT = Kind("", "v1", "serviceaccounts", "ServiceAccount")
ROLE = Kind("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLE_BINDING = Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
DEPLOYMENT = Kind("apps", "v1", "deployments", "Deployment")

KINDS = {k.kind: k for k in (CONFIG_MAP, SERVICE, SERVICE_ACCOUNT, ROLE, ROLE_BINDING, DEPLOYMENT)}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying: the server is overloaded or failing, or the object changed under us."""
        return self.status in (409, 429) or self.status >= 500


class KubeApi:
    def __init__(self, login: Login, *, timeout: float = 30.0) -> None:
        self._login = login
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    def _connect(self) -> aiohttp.ClientSession:
        if self._session is None:
            info = self._login()
            self._server = info.server.rstrip("/")
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
                headers={**info.as_http_headers(), "User-Agent": FIELD_MANAGER},
                timeout=self._timeout,
                trust_env=info.trust_env,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "",
    ) -> Any:
        for attempt in (1, 2):
            session = self._connect()
            headers = {"Content-Type": content_type} if content_type else {}
            data = json.dumps(body) if body is not None else None
            try:
                async with session.request(
                    method, self._server + path, data=data, params=params, headers=headers
                ) as response:
                    text = await response.text()
                    if response.status == 401 and attempt == 1:
                        await self.close()  # log in again with fresh credentials
                        continue
                    if response.status >= 400:
                        raise ApiError(response.status, _message(text))
                    return json.loads(text) if text else None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiError(503, f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._request("GET", kind.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list(self, kind: Kind, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self._request("GET", kind.path(namespace), params=params)
        return list(result.get("items") or [])

    async def delete(self, kind: Kind, namespace: str, name: str) -> None:
        """Deletes an object; one already gone is not an error."""
        try:
            await self._request("DELETE", kind.path(namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of a whole manifest (created if absent) under the operator's field manager."""
        meta = manifest["metadata"]
        kind = KINDS[manifest["kind"]]
        result: dict[str, Any] = await self._request(
            "PATCH",
            kind.path(meta["namespace"], meta["name"]),
            body=manifest,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",  # JSON is YAML
        )
        return result

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patches the status subresource (None values remove fields)."""
        await self._request(
            "PATCH",
            kind.path(namespace, name, "status"),
            body={"status": status},
            params={"fieldManager": FIELD_MANAGER},
            content_type="application/merge-patch+json",
        )


def _message(text: str) -> str:
    try:
        return str(json.loads(text).get("message") or text)
    except (ValueError, AttributeError):
        return text[:500]
