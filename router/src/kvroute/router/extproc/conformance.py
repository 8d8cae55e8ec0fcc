"""GIE conformance mode (`kvroute router --gie-conformance`): the test headers of the Gateway API Inference
Extension conformance suite, honoured as GIE's lightweight Endpoint Picker (`cmd/lwepp`, v1.6.2) honours them,
so that kvroute can be the Endpoint Picker of a conformance run. Off by default: it lets a client choose its
endpoint, which a production router must never allow.

- Request header `test-epp-endpoint-selection: entry[,entry...]` (the first such header), each entry a pod IP
  (every port of that address) or `ip:port` (that endpoint): the request, scheduled or passed through, goes only
  to the listed endpoints of the pool. It replaces the gateway's subset hint when both are present. Listing no
  endpoint of the pool leaves no candidate: 503, as for a subset hint naming none. An empty value restricts
  nothing.
- Upstream request header `x-echo-set-header: x-conformance-test-served-endpoint:<primary ip:port>`: the suite's
  echo server copies it into its response (what the endpoint picker chose).
- Response header `x-conformance-test-served-endpoint`, on every response Envoy shows the router: the gateway's
  `envoy.lb` / `x-gateway-destination-endpoint-served` metadata (what served), overwriting the echoed one;
  `fail: missing envoy lb metadata` when Envoy forwards no `envoy.lb` namespace, `fail: missing destination
  endpoint served metadata` when the namespace holds no such string.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2

from kvroute.router.extproc.protocol import LB_NAMESPACE, SERVED_KEY

SELECTION_HEADER = "test-epp-endpoint-selection"
SERVED_HEADER = "x-conformance-test-served-endpoint"
ECHO_HEADER = "x-echo-set-header"
NO_LB_METADATA = "fail: missing envoy lb metadata"
NO_SERVED_METADATA = "fail: missing destination endpoint served metadata"


def selection(headers: Iterable[tuple[str, str]]) -> frozenset[str] | None:
    """The endpoints the test header allows (ids `ip:port` or bare IPs, as `Director.candidates` takes them);
    None when there is no header or its value is empty."""
    for name, value in headers:
        if name == SELECTION_HEADER:
            return frozenset(entry.strip() for entry in value.split(",") if entry.strip()) if value else None
    return None


def echoed(primary: str) -> dict[str, str]:
    """The upstream request header that has the suite's echo server name the chosen endpoint."""
    return {ECHO_HEADER: f"{SERVED_HEADER}:{primary}"}


def served(metadata: base_pb2.Metadata) -> dict[str, str]:
    """The response header that reports the endpoint that served, as the gateway says."""
    lb = metadata.filter_metadata.get(LB_NAMESPACE)
    if lb is None:
        return {SERVED_HEADER: NO_LB_METADATA}
    value = lb.fields.get(SERVED_KEY)
    if value is None or value.WhichOneof("kind") != "string_value":
        return {SERVED_HEADER: NO_SERVED_METADATA}
    return {SERVED_HEADER: value.string_value}
