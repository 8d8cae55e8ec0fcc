from __future__ import annotations

import json
from typing import Any

import kopf
import pytest

from kvroute.operator.kube import CONFIG_MAP, DEPLOYMENT, INFERENCE_POOL, SCHEDULING_PROFILE, ApiError, KubeApi

from .conftest import CONFIG_MAPS, NAMESPACE, PROFILES, profile_object


def test_paths() -> None:
    assert CONFIG_MAP.path("ml", "cm") == "/api/v1/namespaces/ml/configmaps/cm"
    assert DEPLOYMENT.path("ml") == "/apis/apps/v1/namespaces/ml/deployments"
    assert (
        SCHEDULING_PROFILE.path("ml", "p", "status")
        == "/apis/kvroute.io/v1alpha1/namespaces/ml/schedulingprofiles/p/status"
    )
    assert INFERENCE_POOL.api_version == "inference.networking.k8s.io/v1"
    assert CONFIG_MAP.api_version == "v1"


def _api(kmock: Any, logins: list[int] | None = None) -> KubeApi:
    def login() -> kopf.ConnectionInfo:
        if logins is not None:
            logins.append(1)
        return kopf.ConnectionInfo(server=str(kmock.url), token=f"token-{len(logins or [])}")

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
        assert json.loads(request.body) == manifest
        live = await api.get(CONFIG_MAP, NAMESPACE, "cm")
        assert live is not None
        assert live["data"] == {"a": "1"}
        assert [item["metadata"]["name"] for item in await api.list(CONFIG_MAP, NAMESPACE)] == ["cm"]

        profile = profile_object("fast")
        kmock.objects[kmock.resource(PROFILES), NAMESPACE, "fast"] = profile
        await api.patch_status(SCHEDULING_PROFILE, NAMESPACE, "fast", {"configHash": "h"})
        assert kmock.objects[kmock.resource(PROFILES), NAMESPACE, "fast"]["status"] == {"configHash": "h"}
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
    api = KubeApi(lambda: kopf.ConnectionInfo(server="http://127.0.0.1:9"), timeout=2)
    try:
        with pytest.raises(ApiError) as caught:
            await api.get(CONFIG_MAP, NAMESPACE, "cm")
        assert caught.value.transient
    finally:
        await api.close()
