"""The GIE conformance suite's test headers: reading the endpoint selection, reporting the served endpoint."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from kvroute.router.extproc import conformance, protocol


def _metadata(namespace: str, fields: dict[str, Any]) -> base_pb2.Metadata:
    metadata = base_pb2.Metadata()
    value = struct_pb2.Struct()
    value.update(fields)
    metadata.filter_metadata[namespace].CopyFrom(value)
    return metadata


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("test-epp-endpoint-selection", "10.0.0.2")], {"10.0.0.2"}),
        ([("test-epp-endpoint-selection", "10.0.0.2, 10.0.0.3:8000,")], {"10.0.0.2", "10.0.0.3:8000"}),
        ([("test-epp-endpoint-selection", ",")], set()),  # a selection naming nothing: no candidate
        ([("x-other", "10.0.0.2")], None),
        ([("test-epp-endpoint-selection", "")], None),
        # Only the first header counts, even an empty one.
        ([("test-epp-endpoint-selection", "10.0.0.2"), ("test-epp-endpoint-selection", "10.0.0.3")], {"10.0.0.2"}),
        ([("test-epp-endpoint-selection", ""), ("test-epp-endpoint-selection", "10.0.0.3")], None),
    ],
)
def test_the_selection_header_lists_ips_or_endpoints(headers: list[tuple[str, str]], expected: set[str] | None) -> None:
    assert conformance.selection(headers) == (None if expected is None else frozenset(expected))


def test_the_echo_server_is_told_the_primary_pick() -> None:
    assert conformance.echoed("10.0.0.2:3000") == {
        "x-echo-set-header": "x-conformance-test-served-endpoint:10.0.0.2:3000"
    }


@pytest.mark.parametrize(
    ("metadata", "reported"),
    [
        (_metadata(protocol.LB_NAMESPACE, {protocol.SERVED_KEY: "10.0.0.3:3000"}), "10.0.0.3:3000"),
        (base_pb2.Metadata(), "fail: missing envoy lb metadata"),
        (
            _metadata(protocol.LB_NAMESPACE, {protocol.DESTINATION_HEADER: "10.0.0.3:3000"}),
            "fail: missing destination endpoint served metadata",
        ),
        (
            _metadata(protocol.LB_NAMESPACE, {protocol.SERVED_KEY: ["10.0.0.3:3000"]}),
            "fail: missing destination endpoint served metadata",
        ),
    ],
)
def test_the_served_endpoint_is_reported_as_the_gateway_says_or_as_a_failure(
    metadata: base_pb2.Metadata, reported: str
) -> None:
    assert conformance.served(metadata) == {"x-conformance-test-served-endpoint": reported}
