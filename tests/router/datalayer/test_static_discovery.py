from __future__ import annotations

import pytest

from kvroute.router.datalayer.static_discovery import parse_endpoints
from kvroute.router.framework import Role


def test_endpoints_with_labels_keep_order_and_roles() -> None:
    endpoints = parse_endpoints("127.0.0.2:8000;llm-d.ai/role=decode,127.0.0.3:8000;llm-d.ai/role=prefill")

    assert [e.id for e in endpoints] == ["127.0.0.2:8000", "127.0.0.3:8000"]
    assert [e.role for e in endpoints] == [Role.DECODE, Role.PREFILL]
    assert endpoints[0].address == "127.0.0.2"
    assert endpoints[0].port == 8000
    assert dict(endpoints[0].labels) == {"llm-d.ai/role": "decode"}


def test_plain_endpoints_serve_both_roles_and_are_named_by_address() -> None:
    endpoints = parse_endpoints("127.0.0.2:8000, 127.0.0.2:8001")

    assert [e.id for e in endpoints] == ["127.0.0.2:8000", "127.0.0.2:8001"]
    assert all(e.role is Role.BOTH for e in endpoints)
    assert endpoints[1].pod_name == "127.0.0.2:8001"
    assert dict(endpoints[1].labels) == {}


def test_role_shorthand_and_several_labels() -> None:
    (endpoint,) = parse_endpoints("10.1.2.3:9000;role=prefill;inference.networking.k8s.io/engine-type=sglang;tier=")

    assert endpoint.role is Role.PREFILL
    assert dict(endpoint.labels) == {
        "llm-d.ai/role": "prefill",
        "inference.networking.k8s.io/engine-type": "sglang",
        "tier": "",
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "--endpoints is empty"),
        ("   ", "--endpoints is empty"),
        ("127.0.0.2:8000,,127.0.0.3:8000", "--endpoints item 2 is empty"),
        ("127.0.0.2:8000,", "--endpoints item 2 is empty"),
        ("127.0.0.2", "item 1 '127.0.0.2': expected ip:port"),
        (":8000", "expected ip:port"),
        ("localhost:8000", "'localhost' is not an IPv4 address"),
        ("127.0.0.2:8000,256.0.0.1:8000", "item 2 '256.0.0.1:8000': '256.0.0.1' is not an IPv4 address"),
        ("[::1]:8000", "is not an IPv4 address"),
        ("127.0.0.2:0", "port '0' is not an integer in 1-65535"),
        ("127.0.0.2:65536", "port '65536' is not an integer in 1-65535"),
        ("127.0.0.2:http", "port 'http' is not an integer"),
        ("127.0.0.2:-1", "port '-1' is not an integer"),
        ("127.0.0.2:\u00b2", "is not an integer"),
        ("127.0.0.2:8000;decode", "label 'decode' is not of the form key=value"),
        ("127.0.0.2:8000;=decode", "'' is not a valid label key"),
        ("127.0.0.2:8000;bad key=x", "'bad key' is not a valid label key"),
        ("127.0.0.2:8000;role=de code", "'de code' is not a valid value for label 'llm-d.ai/role'"),
        ("127.0.0.2:8000;a=" + "x" * 64, "is not a valid value for label 'a'"),
        ("127.0.0.2:8000;role=decode;llm-d.ai/role=prefill", "label 'llm-d.ai/role' is given twice"),
        ("127.0.0.2:8000,127.0.0.3:8000,127.0.0.2:8000", "item 3 '127.0.0.2:8000': endpoint 127.0.0.2:8000 is listed"),
    ],
)
def test_bad_specs_name_the_offending_item(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_endpoints(spec)

    assert message in str(excinfo.value)
