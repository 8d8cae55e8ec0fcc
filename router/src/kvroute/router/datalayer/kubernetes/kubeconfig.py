"""Where the Kubernetes API server is and how the router authenticates to it.

Two sources, read once at startup:

- **In cluster** (the default): the API server at `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
  verified with the service account's `ca.crt`; the bearer token is the service account's `token` file, which the
  client re-reads (projected tokens are rotated by the kubelet, so a token read once would expire).
- **A kubeconfig file** (`--kubeconfig PATH`): its current context's cluster (`server`, `certificate-authority` or
  `certificate-authority-data`, `insecure-skip-tls-verify`) and user (`token`, `tokenFile`, or
  `client-certificate[-data]` + `client-key[-data]`). Relative file paths are relative to the kubeconfig's
  directory. `exec` and `auth-provider` users, and basic auth, are refused with a clear error: the router runs
  with a service account, and a kubeconfig is for tests and development.

Every problem raises `KubeConfigError` naming the file and the field.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(Exception):
    """The API server's address or credentials could not be worked out."""


@dataclass(frozen=True)
class ClusterConfig:
    server: str  # base URL, e.g. https://10.96.0.1:443
    ssl_context: ssl.SSLContext | None  # None only for a plain http:// server
    token: str | None = None
    token_file: Path | None = None  # read (and re-read) by the client; wins over `token`
    namespace: str | None = None  # the kubeconfig context's namespace, or the service account's


def service_account_namespace(sa_dir: Path = SERVICE_ACCOUNT_DIR) -> str | None:
    """The namespace of the pod this process runs in, or None outside a pod."""
    try:
        return (sa_dir / "namespace").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def in_cluster_config(environ: Mapping[str, str] = os.environ, sa_dir: Path = SERVICE_ACCOUNT_DIR) -> ClusterConfig:
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeConfigError(
            "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST/PORT are not set); pass --kubeconfig PATH"
        )
    token_file = sa_dir / "token"
    ca_file = sa_dir / "ca.crt"
    for needed in (token_file, ca_file):
        if not needed.is_file():
            raise KubeConfigError(f"service account file {needed} is missing (is the token mounted?)")
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise KubeConfigError(f"cannot load the service account CA {ca_file}: {exc}") from None
    return ClusterConfig(
        server=f"https://{host}:{port}",
        ssl_context=context,
        token_file=token_file,
        namespace=service_account_namespace(sa_dir),
    )


def load_kubeconfig(path: str | os.PathLike[str], context_name: str | None = None) -> ClusterConfig:
    """The cluster and user of `context_name` (default: `current-context`) in the kubeconfig at `path`."""
    file = Path(path)
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise KubeConfigError(f"cannot read kubeconfig {file}: {exc}") from None
    reader = _Reader(file, document)
    name = context_name or reader.string(document, "current-context")
    context = reader.named("contexts", "context", name)
    cluster = reader.named("clusters", "cluster", reader.string(context, "cluster", where=f"context {name}"))
    user_name = context.get("user")
    user = reader.named("users", "user", user_name) if user_name else {}

    server = reader.string(cluster, "server", where="cluster").rstrip("/")
    ssl_context: ssl.SSLContext | None = None
    if server.startswith("https://"):
        ssl_context = reader.ssl_context(cluster, user)
    elif not server.startswith("http://"):
        raise KubeConfigError(f"kubeconfig {file}: cluster server {server!r} is not an http(s) URL")
    for unsupported in ("exec", "auth-provider", "username", "password"):
        if user.get(unsupported):
            raise KubeConfigError(f"kubeconfig {file}: user field {unsupported!r} is not supported; use a token")
    token_file = reader.path(user["tokenFile"]) if user.get("tokenFile") else None
    namespace = context.get("namespace")
    return ClusterConfig(
        server=server,
        ssl_context=ssl_context,
        token=user.get("token") or None,
        token_file=token_file,
        namespace=namespace if isinstance(namespace, str) and namespace else None,
    )


class _Reader:
    """Field access with error messages that name the kubeconfig file."""

    def __init__(self, file: Path, document: Any) -> None:
        if not isinstance(document, dict):
            raise KubeConfigError(f"kubeconfig {file} is not a YAML mapping")
        self.file = file
        self.document = document

    def fail(self, message: str) -> KubeConfigError:
        return KubeConfigError(f"kubeconfig {self.file}: {message}")

    def string(self, mapping: Mapping[str, Any], key: str, *, where: str = "") -> str:
        value = mapping.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{where + ' ' if where else ''}{key!r} is missing or not a string")
        return value

    def named(self, section: str, kind: str, name: str) -> dict[str, Any]:
        for entry in self.document.get(section) or ():
            if isinstance(entry, dict) and entry.get("name") == name:
                body = entry.get(kind)
                if not isinstance(body, dict):
                    raise self.fail(f"{kind} {name!r} has no {kind!r} mapping")
                return body
        raise self.fail(f"no {kind} named {name!r} in {section!r}")

    def path(self, value: str) -> Path:
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else self.file.parent / candidate

    def data(self, mapping: Mapping[str, Any], key: str) -> bytes | None:
        """The bytes of `key-data` (base64) or of the file named by `key`; None when neither is set."""
        if mapping.get(f"{key}-data"):
            try:
                return base64.b64decode(mapping[f"{key}-data"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise self.fail(f"{key}-data is not valid base64") from None
        if mapping.get(key):
            file = self.path(mapping[key])
            try:
                return file.read_bytes()
            except OSError as exc:
                raise self.fail(f"cannot read {key} {file}: {exc}") from None
        return None

    def ssl_context(self, cluster: Mapping[str, Any], user: Mapping[str, Any]) -> ssl.SSLContext:
        ca = self.data(cluster, "certificate-authority")
        try:
            context = ssl.create_default_context(cadata=ca.decode("ascii") if ca is not None else None)
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise self.fail(f"the cluster's certificate authority is not valid PEM: {exc}") from None
        if cluster.get("insecure-skip-tls-verify") is True:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert = self.data(user, "client-certificate")
        key = self.data(user, "client-key")
        if (cert is None) != (key is None):
            raise self.fail("client-certificate and client-key must be given together")
        if cert is not None and key is not None:
            _load_cert_chain(context, cert, key, self)
        return context


def _load_cert_chain(context: ssl.SSLContext, cert: bytes, key: bytes, reader: _Reader) -> None:
    # `load_cert_chain` only reads files, so the PEM bytes go through a private temporary directory that is
    # removed at once.
    with tempfile.TemporaryDirectory(prefix="kvroute-kubeconfig-") as directory:
        cert_file, key_file = Path(directory, "client.crt"), Path(directory, "client.key")
        for file, content in ((cert_file, cert), (key_file, key)):
            file.touch(mode=0o600)
            file.write_bytes(content)
        try:
            context.load_cert_chain(str(cert_file), str(key_file))
        except ssl.SSLError as exc:
            raise reader.fail(f"the client certificate or key is not valid PEM: {exc}") from None
