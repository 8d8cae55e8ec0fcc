"""Where the Kubernetes API server is and how the router authenticates to it, as kubernetes_asyncio loads it.

Two sources, read once at startup into a `Cluster` (the library's `Configuration` and the namespace to default to):

- **In cluster** (the default): the API server at `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
  verified with the service account's `ca.crt`; the bearer token is the service account's `token` file, which the
  library re-reads once a minute (projected tokens are rotated by the kubelet, so a token read once would expire).
- **A kubeconfig file** (`--kubeconfig PATH`): its current context's cluster and user, with whatever kubectl
  accepts there that the library supports: a token or `tokenFile`, a client certificate, and `exec` credential
  plugins (what EKS, GKE and AKS kubeconfigs use). The plugin runs at startup, and again before a request once
  the credential it printed has expired (its `expirationTimestamp`; a plugin that prints none runs before every
  request). A plugin that fails makes the request fail with `ApiError` 401 (see `api`), naming the plugin's error.

Every problem found at startup raises `KubeConfigError` naming the file.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import ConfigException
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader
from kubernetes_asyncio.config.kube_config import KubeConfigLoader, load_kube_config

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(Exception):
    """The API server's address or credentials could not be worked out."""


@dataclass(frozen=True)
class Cluster:
    configuration: Configuration  # kubernetes_asyncio's: server, TLS, credentials (and how to refresh them)
    namespace: str | None = None  # the kubeconfig context's namespace, or the service account's

    @property
    def server(self) -> str:
        return str(self.configuration.host)


def service_account_namespace(sa_dir: Path = SERVICE_ACCOUNT_DIR) -> str | None:
    """The namespace of the pod this process runs in, or None outside a pod."""
    try:
        return (sa_dir / "namespace").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def in_cluster_config(environ: Mapping[str, str] = os.environ, sa_dir: Path = SERVICE_ACCOUNT_DIR) -> Cluster:
    if not environ.get("KUBERNETES_SERVICE_HOST") or not environ.get("KUBERNETES_SERVICE_PORT"):
        raise KubeConfigError(
            "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST/PORT are not set); pass --kubeconfig PATH"
        )
    token_file, ca_file = sa_dir / "token", sa_dir / "ca.crt"
    for needed in (token_file, ca_file):
        if not needed.is_file():
            raise KubeConfigError(f"service account file {needed} is missing (is the token mounted?)")
    configuration = Configuration()
    loader = InClusterConfigLoader(token_filename=str(token_file), cert_filename=str(ca_file), environ=dict(environ))
    try:
        loader.load_and_set(configuration)
    except (ConfigException, OSError) as exc:
        raise KubeConfigError(f"service account in {sa_dir}: {exc}") from None
    return Cluster(configuration, service_account_namespace(sa_dir))


async def load_kubeconfig(path: str | os.PathLike[str], context_name: str | None = None) -> Cluster:
    """The cluster and user of `context_name` (default: `current-context`) in the kubeconfig at `path`; runs the
    user's exec plugin, if it has one, for the first credential."""
    file = Path(path)
    if not await asyncio.to_thread(file.is_file):  # the library would only say the document lacks every key
        raise KubeConfigError(f"cannot read kubeconfig {file}: no such file")
    configuration = Configuration()
    try:
        loader = await load_kube_config(
            config_file=str(file), context=context_name, client_configuration=configuration, persist_config=False
        )
    except AssertionError:  # how the library says that the context's cluster is empty
        raise KubeConfigError(f"kubeconfig {file}: the current context's cluster is missing or empty") from None
    except (ConfigException, OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise KubeConfigError(f"kubeconfig {file}: {exc}") from None
    if not str(configuration.host).startswith(("https://", "http://")):
        raise KubeConfigError(f"kubeconfig {file}: cluster server {configuration.host!r} is not an http(s) URL")
    try:
        _check_tls(configuration)
    except (OSError, ssl.SSLError) as exc:
        raise KubeConfigError(f"kubeconfig {file}: the certificate authority or client certificate: {exc}") from None
    context: Mapping[str, Any] = (loader.current_context or {}).get("context") or {}
    namespace = context.get("namespace")
    _refresh_exec_credentials(loader, configuration)
    return Cluster(configuration, namespace if isinstance(namespace, str) and namespace else None)


def _check_tls(configuration: Configuration) -> None:
    """Build the TLS context as the library will on first use, so that a bad CA or key fails at startup."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, keyfile=configuration.key_file)


def _refresh_exec_credentials(loader: KubeConfigLoader, configuration: Configuration) -> None:
    """Make the library re-run an exec plugin whose credential expired, before the request that needs it."""
    user = loader._user  # the library's own `refresh_token` reads the user section the same way
    if user is None or "exec" not in user:
        return

    async def refresh(configuration: Configuration) -> None:
        await loader.load_from_exec_plugin()  # a no-op until the last credential's expirationTimestamp
        token = getattr(loader, "token", None)  # absent when the plugin gives a client certificate instead
        if token:
            configuration.api_key["BearerToken"] = token

    configuration.refresh_api_key_hook = refresh
