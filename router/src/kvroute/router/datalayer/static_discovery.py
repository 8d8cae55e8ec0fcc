"""Static discovery: the endpoint set given on the command line with `--endpoints`.

Grammar: endpoints are separated by commas; each is `ip:port` optionally followed by `;key=value` labels::

    127.0.0.2:8000;llm-d.ai/role=decode,127.0.0.3:8000;llm-d.ai/role=prefill

`role=<value>` is shorthand for the `llm-d.ai/role` label. Addresses are IPv4 literals (no host names: the router
never resolves names for endpoints), ports 1-65535, label keys and values follow Kubernetes label syntax. Any
mistake raises `ValueError` naming the offending item, so a typo fails at startup instead of routing nowhere.
"""

from __future__ import annotations

import ipaddress
import re

from kvroute.router.framework.endpoint import ROLE_LABEL, Endpoint

ROLE_SHORTHAND = "role"

_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_SUBDOMAIN = r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?"
_LABEL_KEY = re.compile(rf"(?:{_DNS_SUBDOMAIN}/)?{_NAME}")
_LABEL_VALUE = re.compile(rf"(?:{_NAME})?")


def parse_endpoints(spec: str) -> list[Endpoint]:
    """Parse an `--endpoints` value into endpoints, in the order given; duplicates and empty items are errors."""
    if not spec.strip():
        raise ValueError("--endpoints is empty: expected ip:port[;label=value...][,ip:port...]")
    endpoints: list[Endpoint] = []
    seen: set[str] = set()
    for position, item in enumerate(spec.split(","), start=1):
        endpoint = _parse_item(item.strip(), position)
        if endpoint.id in seen:
            raise ValueError(f"--endpoints item {position} {item.strip()!r}: endpoint {endpoint.id} is listed twice")
        seen.add(endpoint.id)
        endpoints.append(endpoint)
    return endpoints


def _parse_item(item: str, position: int) -> Endpoint:
    where = f"--endpoints item {position} {item!r}"
    if not item:
        raise ValueError(f"--endpoints item {position} is empty (stray comma?)")
    address_part, *label_parts = item.split(";")
    address, port = _parse_address(address_part.strip(), where)
    labels: dict[str, str] = {}
    for part in label_parts:
        key, value = _parse_label(part.strip(), where)
        if key in labels:
            raise ValueError(f"{where}: label {key!r} is given twice")
        labels[key] = value
    return Endpoint.create(address, port, labels=labels)


def _parse_address(text: str, where: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{where}: expected ip:port, got {text!r}")
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{where}: {host!r} is not an IPv4 address") from None
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{where}: port {port_text!r} is not an integer in 1-65535")
    return str(address), int(port_text)


def _parse_label(text: str, where: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep:
        raise ValueError(f"{where}: label {text!r} is not of the form key=value")
    if key == ROLE_SHORTHAND:
        key = ROLE_LABEL
    if not _LABEL_KEY.fullmatch(key):
        raise ValueError(f"{where}: {key!r} is not a valid label key")
    if not _LABEL_VALUE.fullmatch(value):
        raise ValueError(f"{where}: {value!r} is not a valid value for label {key!r}")
    return key, value
