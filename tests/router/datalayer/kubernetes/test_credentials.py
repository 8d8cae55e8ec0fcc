"""Finding the API server and credentials: in-cluster service account, or a kubeconfig (token or client cert)."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from kvroute.router.datalayer.kubernetes.client import KubeClient
from kvroute.router.datalayer.kubernetes.kubeconfig import (
    KubeConfigError,
    in_cluster_config,
    load_kubeconfig,
    service_account_namespace,
)


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


@pytest.fixture
def service_account(tmp_path: Path, certs: Path) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text("sa-token\n")
    (directory / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
    (directory / "namespace").write_text("team-a")
    return directory


def test_in_cluster_config_uses_the_service_environment_and_account(service_account: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}

    config = in_cluster_config(environ, service_account)

    assert config.server == "https://10.96.0.1:443"
    assert config.token_file == service_account / "token"
    assert config.namespace == "team-a"
    assert isinstance(config.ssl_context, ssl.SSLContext)
    assert config.ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_in_cluster_config_brackets_an_ipv6_service_host(service_account: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}

    assert in_cluster_config(environ, service_account).server == "https://[fd00::1]:443"


def test_outside_a_pod_the_error_says_to_pass_a_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="pass --kubeconfig PATH"):
        in_cluster_config({}, tmp_path)
    with pytest.raises(KubeConfigError, match=r"service account file .*token is missing"):
        in_cluster_config({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)
    assert service_account_namespace(tmp_path) is None


def test_kubeconfig_with_token_ca_data_and_namespace(tmp_path: Path, certs: Path) -> None:
    ca_data = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
    path = write_kubeconfig(
        tmp_path / "config",
        {"server": "https://127.0.0.1:6443/", "certificate-authority-data": ca_data},
        {"token": "abc"},
        namespace="team-b",
    )

    config = load_kubeconfig(path)

    assert (config.server, config.token, config.token_file, config.namespace) == (
        "https://127.0.0.1:6443",
        "abc",
        None,
        "team-b",
    )
    assert config.ssl_context is not None and config.ssl_context.check_hostname


def test_kubeconfig_relative_files_are_relative_to_the_kubeconfig(tmp_path: Path, certs: Path) -> None:
    (tmp_path / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
    (tmp_path / "token").write_text("from-file")
    path = write_kubeconfig(
        tmp_path / "config",
        {"server": "https://127.0.0.1:6443", "certificate-authority": "ca.crt"},
        {"tokenFile": "token"},
    )

    assert load_kubeconfig(path).token_file == tmp_path / "token"


def test_insecure_skip_tls_verify_turns_verification_off(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config", {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}, {"token": "t"}
    )

    context = load_kubeconfig(path).ssl_context
    assert context is not None and context.verify_mode == ssl.CERT_NONE and not context.check_hostname


@pytest.mark.parametrize(
    ("cluster", "user", "message"),
    [
        ({"server": "https://127.0.0.1:6443"}, {"exec": {"command": "aws"}}, "user field 'exec' is not supported"),
        ({"server": "https://127.0.0.1:6443"}, {"username": "u", "password": "p"}, "'username' is not supported"),
        ({"server": "ftp://x"}, {}, "is not an http(s) URL"),
        ({}, {}, "cluster 'server' is missing"),
        ({"server": "https://x", "certificate-authority-data": "%%%"}, {}, "certificate-authority-data is not valid"),
        ({"server": "https://x", "certificate-authority": "/nonexistent/ca"}, {}, "cannot read certificate-authority"),
        ({"server": "https://x"}, {"client-certificate-data": "QQ=="}, "must be given together"),
    ],
)
def test_kubeconfig_errors_name_the_file_and_field(
    tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any], message: str
) -> None:
    path = write_kubeconfig(tmp_path / "config", cluster, user)

    with pytest.raises(KubeConfigError) as caught:
        load_kubeconfig(path)

    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_a_missing_context_or_file_is_an_error(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", {"server": "http://127.0.0.1:1"}, {})

    with pytest.raises(KubeConfigError, match="no context named 'absent'"):
        load_kubeconfig(path, "absent")
    with pytest.raises(KubeConfigError, match="cannot read kubeconfig"):
        load_kubeconfig(tmp_path / "missing")


async def test_client_certificate_auth_against_a_tls_server(tmp_path: Path, certs: Path, tls_api: Any) -> None:
    """The fake API server demands a client certificate; the kubeconfig's embedded cert and key get the list
    through, and the server's certificate is checked against the kubeconfig's CA."""
    tls_api.put("/api/v1/namespaces/ns/pods", {"metadata": {"name": "p"}})

    def data(name: str) -> str:
        return base64.b64encode((certs / name).read_bytes()).decode()

    path = write_kubeconfig(
        tmp_path / "config",
        {"server": tls_api.url, "certificate-authority-data": data("ca.crt")},
        {"client-certificate-data": data("client.crt"), "client-key-data": data("client.key")},
    )
    async with KubeClient(load_kubeconfig(path)) as client:
        items, _ = await client.list("/api/v1/namespaces/ns/pods")

    assert [item["metadata"]["name"] for item in items] == ["p"]
    assert tls_api.url.startswith("https://127.0.0.1:")

    without_cert = write_kubeconfig(
        tmp_path / "anonymous", {"server": tls_api.url, "certificate-authority-data": data("ca.crt")}, {}
    )
    async with KubeClient(load_kubeconfig(without_cert)) as client:
        with pytest.raises(aiohttp.ClientError):
            await client.list("/api/v1/namespaces/ns/pods")
