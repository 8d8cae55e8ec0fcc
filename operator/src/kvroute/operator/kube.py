"""The operator's own API calls (get, list, server-side apply, delete, status patch) on kubernetes_asyncio, and the
credentials that kopf and these calls share.

`load_credentials()` has the library load them: the given kubeconfig; else, in a pod, the service account; else
$KUBECONFIG or ~/.kube/config. A kubeconfig user may have a token, a client certificate or an `exec` credential
plugin (what EKS, GKE and AKS kubeconfigs use), which runs at every login. kopf logs in with the same credentials
(`Credentials.connection_info()`, returned by the operator's `kopf.on.login` handler), told when an exec
credential expires so that it logs in again in time. `KubeApi` logs in again when the credential it holds has
expired, and once on a 401 (service account tokens rotate), then retries.

Writes are server-side applies under one field manager: the operator owns exactly the fields of the manifests it
applies, `force` takes them back from whoever changed them, and fields it does not send are left to others.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio.client import ApiClient, ApiException, Configuration
from kubernetes_asyncio.config import ConfigException, load_kube_config
from kubernetes_asyncio.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)

from kvroute.operator.settings import FIELD_MANAGER
from kvroute.router.config import objectives

AUTH = ["BearerToken"]  # the library's name for the Authorization header it fills in
EXPIRY_MARGIN = datetime.timedelta(seconds=30)  # log in again this long before a credential expires


@dataclass(frozen=True)
class Credentials:
    configuration: Configuration  # kubernetes_asyncio's: server, TLS, bearer token or client certificate
    expiration: datetime.datetime | None = None  # of an exec plugin's credential (UTC)

    def expired(self, now: datetime.datetime | None = None) -> bool:
        if self.expiration is None:
            return False
        now = now or datetime.datetime.now(datetime.UTC)
        return self.expiration.astimezone(datetime.UTC) - EXPIRY_MARGIN <= now

    def connection_info(self) -> kopf.ConnectionInfo:
        """The same credentials for kopf (its own API client)."""
        config = self.configuration
        header = str(config.api_key.get("BearerToken") or "")
        scheme, _, token = header.partition(" ") if " " in header else ("Bearer", "", header)
        return kopf.ConnectionInfo(
            server=str(config.host),
            ca_path=config.ssl_ca_cert,
            insecure=not config.verify_ssl,
            username=config.username or None,
            password=config.password or None,
            scheme=scheme if token else None,
            token=token or None,
            certificate_path=config.cert_file,
            private_key_path=config.key_file,
            expiration=self.expiration,
        )


Login = Callable[[], Awaitable[Credentials]]


async def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """`kubeconfig`; else the pod's service account; else $KUBECONFIG or ~/.kube/config."""
    configuration = Configuration()
    if kubeconfig is None:
        try:
            InClusterConfigLoader(SERVICE_TOKEN_FILENAME, SERVICE_CERT_FILENAME).load_and_set(configuration)
        except ConfigException:
            pass  # not in a pod
        else:
            return Credentials(configuration)
    path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"  # the library expands `~`
    try:
        loader = await load_kube_config(config_file=path, client_configuration=configuration, persist_config=False)
    except (ConfigException, OSError, AssertionError, KeyError, TypeError, ValueError) as exc:
        raise kopf.LoginError(f"no credentials from kubeconfig {path}: {exc or type(exc).__name__}") from None
    return Credentials(configuration, getattr(loader, "exec_plugin_expiry", None))


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
INFERENCE_OBJECTIVE = Kind(objectives.GROUP, objectives.VERSION, objectives.PLURAL, objectives.KIND)
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
        self._client: ApiClient | None = None
        self._credentials: Credentials | None = None

    async def _connect(self) -> ApiClient:
        if self._credentials is not None and self._credentials.expired():
            await self.close()
        if self._client is None:
            self._credentials = await self._login()
            self._client = ApiClient(self._credentials.configuration)
            self._client.user_agent = FIELD_MANAGER
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = None
        self._credentials = None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        for attempt in (1, 2):
            client = await self._connect()
            try:
                return await client.call_api(
                    path,
                    method,
                    query_params=list((params or {}).items()),
                    header_params={"Accept": "application/json", "Content-Type": content_type},
                    body=body,
                    response_types_map={200: "object", 201: "object"},
                    auth_settings=AUTH,
                    _return_http_data_only=True,
                    _request_timeout=self._timeout,
                )
            except ApiException as exc:
                if exc.status == 401 and attempt == 1:
                    await self.close()  # log in again with fresh credentials
                    continue
                raise ApiError(exc.status, _message(str(exc.body or exc.reason))) from None
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
