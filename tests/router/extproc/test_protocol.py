"""Reading Envoy's messages and building the routing and error answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from kvroute.router.extproc import protocol
from kvroute.router.requestcontrol.body import RequestError


def _metadata(namespace: str, fields: dict[str, Any]) -> base_pb2.Metadata:
    metadata = base_pb2.Metadata()
    value = struct_pb2.Struct()
    value.update(fields)
    metadata.filter_metadata[namespace].CopyFrom(value)
    return metadata


def test_headers_are_read_from_raw_value_and_value_and_never_fail_to_decode() -> None:
    headers = pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(key=":path", raw_value=b"/v1/completions"),
                base_pb2.HeaderValue(key="x-old", value="from-value"),
                base_pb2.HeaderValue(key="x-bytes", raw_value=b"caf\xe9"),
            ]
        )
    )

    assert protocol.read_headers(headers) == [
        (":path", "/v1/completions"),
        ("x-old", "from-value"),
        ("x-bytes", "café"),
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({protocol.SUBSET_KEY: ["127.0.0.2:8000", " 127.0.0.3:8000 ", ""]}, {"127.0.0.2:8000", "127.0.0.3:8000"}),
        ({protocol.SUBSET_KEY: "127.0.0.2:8000,127.0.0.4:8000"}, {"127.0.0.2:8000", "127.0.0.4:8000"}),
        ({protocol.SUBSET_KEY: []}, set()),
        ({protocol.SUBSET_KEY: 5}, set()),
        ({"something-else": ["127.0.0.2:8000"]}, None),
    ],
)
def test_subset_hint(fields: dict[str, Any], expected: set[str] | None) -> None:
    hint = protocol.subset_hint(_metadata(protocol.SUBSET_NAMESPACE, fields))

    assert hint == (None if expected is None else frozenset(expected))
    assert protocol.subset_hint(base_pb2.Metadata()) is None


def test_served_endpoint() -> None:
    metadata = _metadata(protocol.LB_NAMESPACE, {protocol.SERVED_KEY: "127.0.0.3:8000"})

    assert protocol.served_endpoint(metadata) == "127.0.0.3:8000"
    assert protocol.served_endpoint(_metadata(protocol.LB_NAMESPACE, {protocol.SERVED_KEY: 1})) is None
    assert protocol.served_endpoint(base_pb2.Metadata()) is None


def test_routing_overwrites_with_raw_value_and_removes() -> None:
    common = protocol.routing({"x-gateway-destination-endpoint": "127.0.0.2:8000"}, ["x-prefiller-host-port"])
    (option,) = common.header_mutation.set_headers

    assert (option.header.key, option.header.raw_value, option.header.value) == (
        "x-gateway-destination-endpoint",
        b"127.0.0.2:8000",
        "",
    )
    assert option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert list(common.header_mutation.remove_headers) == ["x-prefiller-host-port"]
    assert common.clear_route_cache


def test_immediate_errors_carry_status_json_and_code() -> None:
    answer = protocol.immediate(RequestError(429, "the pool is saturated", "shed"))
    response = answer.immediate_response

    assert response.status.code == 429
    assert json.loads(response.body)["error"] == {
        "message": "the pool is saturated",
        "type": "rate_limit_error",
        "param": None,
        "code": "shed",
    }
    assert [(h.header.key, h.header.raw_value) for h in response.headers.set_headers] == [
        ("content-type", b"application/json")
    ]
    assert response.details == "shed"
