"""The operator's API calls (kubernetes_asyncio underneath) against kmock, and the credentials kopf shares."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubernetes_asyncio.client import Configuration

from kvroute.operator.kube import (
    CONFIG_MAP,
    DEPLOYMENT,
    INFERENCE_POOL,
    SCHEDULING_PROFILE,
    ApiError,
    Credentials,
    KubeApi,
    load_credentials,
)

from .conftest import CONFIG_MAPS, NAMESPACE, PROFILES, profile_object

UTC = datetime.UTC


def test_paths() -> None:
    assert CONFIG_MAP.path("ml", "cm") == "/api/v1/namespaces/ml/configmaps/cm"
    assert DEPLOYMENT.path("ml") == "/apis/apps/v1/namespaces/ml/deployments"
    assert (
        SCHEDULING_PROFILE.path("ml", "p", "status")
        == "/apis/kvroute.io/v1alpha1/namespaces/ml/schedulingprofiles/p/status"
    )
    assert INFERENCE_POOL.api_version == "inference.networking.k8s.io/v1"
    assert CONFIG_MAP.api_version == "v1"


def _credentials(server: str, token: str | None = None, expiration: datetime.datetime | None = None) -> Credentials:
    configuration = Configuration(host=server.rstrip("/"))
    if token is not None:
        configuration.api_key["BearerToken"] = f"Bearer {token}"
    return Credentials(configuration, expiration)


def _api(kmock: Any, logins: list[int] | None = None, expires_in: float | None = None) -> KubeApi:
    async def login() -> Credentials:
        if logins is not None:
            logins.append(1)
        expiration = None if expires_in is None else datetime.datetime.now(UTC) + datetime.timedelta(seconds=expires_in)
        return _credentials(str(kmock.url), f"token-{len(logins or [])}", expiration)

    return KubeApi(login)


async def test_get_list_apply_and_status(kmock: Any) -> None:
    api = _api(kmock)
    try:
        assert await api.get(CONFIG_MAP, NAMESPACE, "cm") is None
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cm", "namespace": NAMESPACE},
            "data": {"a": "1"},
        }
        await api.apply(manifest)
        [request] = [r for r in list(kmock) if r.method == "PATCH"]
        assert request.url.path == "/api/v1/namespaces/ml/configmaps/cm"
        assert request.params == {"fieldManager": "kvroute-operator", "force": "true"}
        assert request.headers["Content-Type"] == "application/apply-patch+yaml"
        assert request.headers["User-Agent"] == "kvroute-operator"
        assert json.loads(request.body) == manifest
        live = await api.get(CONFIG_MAP, NAMESPACE, "cm")
        assert live is not None
        assert live["data"] == {"a": "1"}
        assert [item["metadata"]["name"] for item in await api.list(CONFIG_MAP, NAMESPACE)] == ["cm"]

        profile = profile_object("fast")
        kmock.objects[kmock.resource(PROFILES), NAMESPACE, "fast"] = profile
        await api.patch_status(SCHEDULING_PROFILE, NAMESPACE, "fast", {"configHash": "h"})
        [status_patch] = [r for r in list(kmock) if r.method == "PATCH" and r.url.path.endswith("/status")]
        assert status_patch.headers["Content-Type"] == "application/merge-patch+json"
        assert kmock.objects[kmock.resource(PROFILES), NAMESPACE, "fast"]["status"] == {"configHash": "h"}

        await api.delete(CONFIG_MAP, NAMESPACE, "cm")
        await api.delete(CONFIG_MAP, NAMESPACE, "cm")  # already gone: not an error
        assert await api.get(CONFIG_MAP, NAMESPACE, "cm") is None
    finally:
        await api.close()


async def test_logs_in_again_once_on_401(kmock: Any) -> None:
    logins: list[int] = []
    api = _api(kmock, logins)
    kmock.objects[kmock.resource(CONFIG_MAPS), NAMESPACE, "cm"] = {"metadata": {"name": "cm", "namespace": NAMESPACE}}
    kmock["get /api/v1/namespaces/ml/configmaps/cm"][:1] << 401
    try:
        assert await api.get(CONFIG_MAP, NAMESPACE, "cm") is not None
        assert len(logins) == 2
        auth = [r.headers.get("Authorization") for r in list(kmock)]
        assert auth == ["Bearer token-1", "Bearer token-2"]
    finally:
        await api.close()


async def test_logs_in_again_when_the_credential_expires(kmock: Any) -> None:
    logins: list[int] = []
    api = _api(kmock, logins, expires_in=10)  # within the margin: expired as far as the client is concerned
    try:
        await api.get(CONFIG_MAP, NAMESPACE, "cm")
        await api.get(CONFIG_MAP, NAMESPACE, "cm")
        assert [r.headers.get("Authorization") for r in list(kmock)] == ["Bearer token-1", "Bearer token-2"]
    finally:
        await api.close()


@pytest.mark.parametrize(("code", "transient"), [(500, True), (503, True), (429, True), (403, False), (422, False)])
async def test_errors_say_whether_a_retry_may_help(kmock: Any, code: int, transient: bool) -> None:
    api = _api(kmock)
    kmock["get /api/v1/namespaces/ml/configmaps/cm"] << code
    try:
        with pytest.raises(ApiError) as caught:
            await api.get(CONFIG_MAP, NAMESPACE, "cm")
        assert caught.value.status == code
        assert caught.value.transient is transient
    finally:
        await api.close()


async def test_unreachable_server_is_a_transient_error() -> None:
    async def login() -> Credentials:
        return _credentials("http://127.0.0.1:9")

    api = KubeApi(login, timeout=2)
    try:
        with pytest.raises(ApiError) as caught:
            await api.get(CONFIG_MAP, NAMESPACE, "cm")
        assert caught.value.transient
    finally:
        await api.close()


def test_kopf_gets_the_same_credentials() -> None:
    expiration = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    configuration = Configuration(host="https://127.0.0.1:6443")
    configuration.api_key["BearerToken"] = "Bearer abc"
    configuration.ssl_ca_cert = "/etc/ca.crt"

    info = Credentials(configuration, expiration).connection_info()

    assert (info.server, info.scheme, info.token, info.ca_path) == (
        "https://127.0.0.1:6443",
        "Bearer",
        "abc",
        "/etc/ca.crt",
    )
    assert info.insecure is False
    assert info.expiration == expiration
    assert Credentials(Configuration(host="http://x")).connection_info().token is None


async def test_a_kubeconfig_without_credentials_is_a_login_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"current-context": "absent", "contexts": [], "clusters": [], "users": []}))

    with pytest.raises(kopf.LoginError, match=str(kubeconfig)):
        await load_credentials(str(kubeconfig))
