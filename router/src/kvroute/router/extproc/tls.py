"""The ext_proc server's TLS: `tls.crt` and `tls.key` from `--cert-path`, or a certificate generated at start;
TLS 1.2 or later, ALPN `h2` (gRPC).

The generated certificate is self-signed (ECDSA P-256, valid for a year from an hour ago, so a clock slightly
behind does not reject it), for `localhost`, the listen address and `kvroute-router`. Gateways talk to an
Endpoint Picker over TLS without verifying it (GIE's reference configurations do the same); a deployment that
verifies mounts its own certificate with `--cert-path`.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
COMMON_NAME = "kvroute-router"


def self_signed(host: str) -> tuple[bytes, bytes]:
    """(private key, certificate), PEM-encoded."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)])
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(COMMON_NAME)]
    try:
        alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        alt_names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def load(cert_path: str) -> tuple[bytes, bytes]:
    """(private key, certificate) from `cert_path`/tls.key and tls.crt; `ValueError` naming what is wrong."""
    directory = Path(cert_path)
    try:
        key, cert = (directory / KEY_FILE).read_bytes(), (directory / CERT_FILE).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS certificate in {directory}: {exc}") from None
    try:
        x509.load_pem_x509_certificate(cert)
        serialization.load_pem_private_key(key, password=None)
    except ValueError as exc:
        raise ValueError(f"the TLS certificate in {directory} is not valid PEM: {exc}") from None
    return key, cert


def server_context(host: str, cert_path: str | None) -> ssl.SSLContext:
    """The server side's TLS context; `ValueError` naming what is wrong with a certificate directory."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if cert_path is not None:
        load(cert_path)
        directory = Path(cert_path)
        context.load_cert_chain(directory / CERT_FILE, directory / KEY_FILE)
        return context
    key, cert = self_signed(host)
    with tempfile.TemporaryDirectory(prefix="kvroute-tls-") as name:  # load_cert_chain reads only files
        directory = Path(name)
        (directory / KEY_FILE).write_bytes(key)
        (directory / CERT_FILE).write_bytes(cert)
        context.load_cert_chain(directory / CERT_FILE, directory / KEY_FILE)
    return context
