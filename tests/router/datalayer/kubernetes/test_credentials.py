"""Finding the API server and credentials: in-cluster service account, or a kubeconfig (token, client certificate
or an exec credential plugin)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio.config import incluster_config

from kvroute.router.datalayer.kubernetes.api import KubeClient
from kvroute.router.datalayer.kubernetes.credentials import (
    KubeConfigError,
    in_cluster_config,
    load_kubeconfig,
    service_account_namespace,
)

PODS = "/api/v1/namespaces/ns/pods"


def write_kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any], namespace: str | None = None) -> Path:
    context: dict[str, Any] = {"cluster": "test", "user": "router"}
    if namespace:
        context["namespace"] = namespace
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "contexts": [
            {"name": "other", "context": {"cluster": "nope", "user": "nope"}},
            {"name": "test", "context": context},
        ],
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "router", "user": user}],
    }
    path.write_text(yaml.safe_dump(document))
    return path


def exec_plugin(directory: Path, *, expires_in: float = 3600, fail: bool = False) -> dict[str, Any]:
    """The `exec` section of a kubeconfig user whose plugin prints token `exec-N` at its Nth run (counted in
    `directory/runs`), expiring `expires_in` seconds later; or fails, as an identity provider that refuses."""
    script = directory / "credential-plugin"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import datetime, json, pathlib, sys
            runs = pathlib.Path({str(directory / "runs")!r})
            n = int(runs.read_text()) + 1 if runs.exists() else 1
            runs.write_text(str(n))
            if {fail!r}:
                sys.exit("the identity provider said no")
            expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds={expires_in!r})
            status = {{"token": f"exec-{{n}}", "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}
            kind = {{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential"}}
            print(json.dumps({{**kind, "status": status}}))
            """
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script), "interactiveMode": "Never"}


@pytest.fixture
def service_account(tmp_path: Path, certs: Path) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text("sa-token")
    (directory / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
    (directory / "namespace").write_text("team-a")
    return directory


def test_in_cluster_config_uses_the_service_environment_and_account(service_account: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}

    cluster = in_cluster_config(environ, service_account)

    assert cluster.server == "https://10.96.0.1:443"
    assert cluster.namespace == "team-a"
    assert cluster.configuration.ssl_ca_cert == str(service_account / "ca.crt")
    assert cluster.configuration.verify_ssl
    assert cluster.configuration.api_key["BearerToken"] == "Bearer sa-token"


def test_in_cluster_config_brackets_an_ipv6_service_host(service_account: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}

    assert in_cluster_config(environ, service_account).server == "https://[fd00::1]:443"


def test_outside_a_pod_the_error_says_to_pass_a_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="pass --kubeconfig PATH"):
        in_cluster_config({}, tmp_path)
    with pytest.raises(KubeConfigError, match=r"service account file .*token is missing"):
        in_cluster_config({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)
    assert service_account_namespace(tmp_path) is None


async def test_the_service_account_token_is_re_read_as_the_kubelet_rotates_it(
    https_api: Any, service_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    https_api.put(PODS, {"metadata": {"name": "p"}})
    host, port = https_api.url.removeprefix("https://").split(":")
    environ = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    monkeypatch.setattr(incluster_config, "TOKEN_REFRESH_PERIOD", datetime.timedelta(0))
    (service_account / "token").write_text("first")
    https_api.token = "first"

    async with KubeClient(in_cluster_config(environ, service_account)) as client:
        await client.list(PODS)
        (service_account / "token").write_text("second")
        https_api.token = "second"
        await client.list(PODS)

    assert [r.authorization for r in https_api.requests] == ["Bearer first", "Bearer second"]


async def test_kubeconfig_with_token_ca_data_and_namespace(tmp_path: Path, certs: Path) -> None:
    ca_data = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
    path = write_kubeconfig(
        tmp_path / "config",
        {"server": "https://127.0.0.1:6443/", "certificate-authority-data": ca_data},
        {"token": "abc"},
        namespace="team-b",
    )

    cluster = await load_kubeconfig(path)

    assert (cluster.server, cluster.namespace) == ("https://127.0.0.1:6443", "team-b")
    assert cluster.configuration.api_key["BearerToken"] == "Bearer abc"
    assert cluster.configuration.verify_ssl
    ca = await asyncio.to_thread(Path(cluster.configuration.ssl_ca_cert).read_bytes)
    assert ca == (certs / "ca.crt").read_bytes()


async def test_kubeconfig_relative_files_are_relative_to_the_kubeconfig(tmp_path: Path, certs: Path) -> None:
    (tmp_path / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
    (tmp_path / "token").write_text("from-file")
    path = write_kubeconfig(
        tmp_path / "config",
        {"server": "https://127.0.0.1:6443", "certificate-authority": "ca.crt"},
        {"tokenFile": "token"},
    )

    cluster = await load_kubeconfig(path)

    assert cluster.configuration.api_key["BearerToken"] == "Bearer from-file"
    assert cluster.configuration.ssl_ca_cert == str(tmp_path / "ca.crt")


async def test_insecure_skip_tls_verify_turns_verification_off(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config", {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}, {"token": "t"}
    )

    assert not (await load_kubeconfig(path)).configuration.verify_ssl


@pytest.mark.parametrize(
    ("cluster", "user", "message"),
    [
        ({"server": "ftp://x"}, {}, "is not an http(s) URL"),
        ({}, {}, "cluster is missing or empty"),
        ({"server": "https://x", "certificate-authority-data": "%%%"}, {}, "the certificate authority"),
        ({"server": "https://x", "certificate-authority": "/nonexistent/ca"}, {}, "/nonexistent/ca"),
        ({"server": "https://x"}, {"client-certificate-data": "QQ=="}, "client certificate"),
    ],
)
async def test_kubeconfig_errors_name_the_file_and_field(
    tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any], message: str
) -> None:
    path = write_kubeconfig(tmp_path / "config", cluster, user)

    with pytest.raises(KubeConfigError) as caught:
        await load_kubeconfig(path)

    assert str(path) in str(caught.value)
    assert message in str(caught.value)


async def test_a_missing_context_or_file_is_an_error(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", {"server": "http://127.0.0.1:1"}, {})

    with pytest.raises(KubeConfigError, match="name absent"):
        await load_kubeconfig(path, "absent")
    with pytest.raises(KubeConfigError, match=r"cannot read kubeconfig \S*missing: no such file"):
        await load_kubeconfig(tmp_path / "missing")


async def test_client_certificate_auth_against_a_tls_server(tmp_path: Path, certs: Path, tls_api: Any) -> None:
    """The fake API server demands a client certificate; the kubeconfig's embedded cert and key get the list
    through, and the server's certificate is checked against the kubeconfig's CA."""
    tls_api.put(PODS, {"metadata": {"name": "p"}})

    def data(name: str) -> str:
        return base64.b64encode((certs / name).read_bytes()).decode()

    path = write_kubeconfig(
        tmp_path / "config",
        {"server": tls_api.url, "certificate-authority-data": data("ca.crt")},
        {"client-certificate-data": data("client.crt"), "client-key-data": data("client.key")},
    )
    async with KubeClient(await load_kubeconfig(path)) as client:
        items, _ = await client.list(PODS)

    assert [item["metadata"]["name"] for item in items] == ["p"]
    assert tls_api.url.startswith("https://127.0.0.1:")

    without_cert = write_kubeconfig(
        tmp_path / "anonymous", {"server": tls_api.url, "certificate-authority-data": data("ca.crt")}, {}
    )
    async with KubeClient(await load_kubeconfig(without_cert)) as client:
        with pytest.raises(aiohttp.ClientError):
            await client.list(PODS)


async def test_an_exec_plugin_supplies_the_token_and_runs_again_once_it_expired(
    tmp_path: Path, certs: Path, https_api: Any
) -> None:
    https_api.put(PODS, {"metadata": {"name": "p"}})
    cluster = {"server": https_api.url, "certificate-authority": str(certs / "ca.crt")}
    lasting = write_kubeconfig(tmp_path / "lasting", cluster, {"exec": exec_plugin(tmp_path, expires_in=3600)})

    https_api.token = "exec-1"
    async with KubeClient(await load_kubeconfig(lasting)) as client:
        await client.list(PODS)
        await client.list(PODS)
    assert (tmp_path / "runs").read_text() == "1"  # the credential is reused until it expires

    # A credential that expires at once: the library runs the plugin again before the next request.
    (tmp_path / "runs").unlink()
    expiring = write_kubeconfig(tmp_path / "expiring", cluster, {"exec": exec_plugin(tmp_path, expires_in=0)})
    async with KubeClient(await load_kubeconfig(expiring)) as client:
        https_api.token = "exec-2"
        items, _ = await client.list(PODS)

    assert [item["metadata"]["name"] for item in items] == ["p"]
    assert [r.authorization for r in https_api.requests] == ["Bearer exec-1", "Bearer exec-1", "Bearer exec-2"]


async def test_a_failing_exec_plugin_is_a_clear_error(tmp_path: Path, certs: Path, https_api: Any) -> None:
    cluster = {"server": https_api.url, "certificate-authority": str(certs / "ca.crt")}
    path = write_kubeconfig(tmp_path / "config", cluster, {"exec": exec_plugin(tmp_path, fail=True)})

    with pytest.raises(KubeConfigError) as caught:
        await load_kubeconfig(path)

    assert str(path) in str(caught.value)
    assert "the identity provider said no" in str(caught.value)
    assert not https_api.requests
