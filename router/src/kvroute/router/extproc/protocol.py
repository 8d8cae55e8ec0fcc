"""Envoy's ext_proc messages as the Endpoint Picker protocol uses them: what is read from a `ProcessingRequest`,
and the `ProcessingResponse`s that carry a routing decision or an error.

Read:

- headers: `HeaderValue.raw_value` (Envoy leaves `value` empty), decoded as Latin-1 so no byte can fail;
- the subset hint: `metadata_context.filter_metadata["envoy.lb.subset_hint"]["x-gateway-destination-endpoint-subset"]`,
  a list of `ip:port` (a comma-separated string is accepted too); Envoy forwards it only when the filter's
  `metadata_options.forwarding_namespaces.untyped` names `envoy.lb.subset_hint`;
- the endpoint that served the request, if the gateway says so:
  `metadata_context.filter_metadata["envoy.lb"]["x-gateway-destination-endpoint-served"]`.

Written:

- the destination: header `x-gateway-destination-endpoint: ip:port[,ip:port...]` set with `raw_value` (with
  `value` Envoy's ORIGINAL_DST cluster reads an empty header) and overwriting whatever the client sent, plus the
  same value in dynamic metadata `{"envoy.lb": {"x-gateway-destination-endpoint": ...}}`; `clear_route_cache`
  so routes matching on headers see the new ones; other client-sent routing headers removed;
- a replaced request body: in BUFFERED mode a `BodyMutation.body` with `content-length` set to its length (in
  FULL_DUPLEX_STREAMED mode the body always goes back in `StreamedBodyResponse`s, see `wire`, and Envoy drops
  `content-length` itself);
- errors: an `ImmediateResponse` with the HTTP status, `content-type: application/json` and the OpenAI-style
  error body of `RequestError`; `details` is the error's short code (Envoy logs it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from kvroute.router.requestcontrol.body import RequestError

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"
DESTINATION_HEADER = "x-gateway-destination-endpoint"
LB_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
SERVED_KEY = "x-gateway-destination-endpoint-served"

Mode = processing_mode_pb2.ProcessingMode
NONE: int = Mode.NONE
STREAMED: int = Mode.STREAMED
BUFFERED: int = Mode.BUFFERED
BUFFERED_PARTIAL: int = Mode.BUFFERED_PARTIAL
FULL_DUPLEX_STREAMED: int = Mode.FULL_DUPLEX_STREAMED

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def mode_name(mode: int) -> str:
    name: str = Mode.BodySendMode.Name(mode)
    return name


def read_headers(headers: pb.HttpHeaders) -> list[tuple[str, str]]:
    """(name, value) pairs in Envoy's order; names are lower-case, pseudo-headers (`:path`) included."""
    return [(h.key, h.raw_value.decode("latin-1") if h.raw_value else h.value) for h in headers.headers.headers]


def _struct_field(metadata: base_pb2.Metadata, namespace: str, key: str) -> Any:
    fields = metadata.filter_metadata.get(namespace)
    return None if fields is None else fields.fields.get(key)


def subset_hint(metadata: base_pb2.Metadata) -> frozenset[str] | None:
    """The endpoints the gateway allows for this request; None when it sent no hint (all are allowed)."""
    value = _struct_field(metadata, SUBSET_NAMESPACE, SUBSET_KEY)
    if value is None:
        return None
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return frozenset(v.string_value.strip() for v in value.list_value.values if v.string_value.strip())
    if kind == "string_value":
        return frozenset(part.strip() for part in value.string_value.split(",") if part.strip())
    return frozenset()


def served_endpoint(metadata: base_pb2.Metadata) -> str | None:
    value = _struct_field(metadata, LB_NAMESPACE, SERVED_KEY)
    if value is None or value.WhichOneof("kind") != "string_value":
        return None
    return str(value.string_value) or None


def header_option(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, raw_value=value.encode("latin-1", "replace")), append_action=_OVERWRITE
    )


def destination_metadata(destination: str) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    metadata.fields[LB_NAMESPACE].struct_value.fields[DESTINATION_HEADER].string_value = destination
    return metadata


def routing(set_headers: Mapping[str, str], remove_headers: Iterable[str]) -> pb.CommonResponse:
    """The request headers' mutation that sends the request where `set_headers` says."""
    mutation = pb.HeaderMutation(
        set_headers=[header_option(name, value) for name, value in set_headers.items()],
        remove_headers=remove_headers,
    )
    return pb.CommonResponse(header_mutation=mutation, clear_route_cache=True)


def routed_headers(common: pb.CommonResponse, destination: str) -> pb.ProcessingResponse:
    """The answer to the request headers that routes the request (FULL_DUPLEX_STREAMED, or no body)."""
    return pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(response=common), dynamic_metadata=destination_metadata(destination)
    )


def routed_body(common: pb.CommonResponse, destination: str, body: bytes | None = None) -> pb.ProcessingResponse:
    """The answer to a BUFFERED request body that routes the request (its headers have not been sent yet); `body`
    replaces the client's. In this mode Envoy keeps the client's `content-length` and refuses a body of another
    length, so the header is set to the new body's."""
    if body is not None:
        common.body_mutation.body = body
        common.header_mutation.set_headers.append(header_option("content-length", str(len(body))))
    return pb.ProcessingResponse(
        request_body=pb.BodyResponse(response=common), dynamic_metadata=destination_metadata(destination)
    )


def response_headers(client_headers: Mapping[str, str], body_at_end: bool) -> pb.ProcessingResponse:
    """The answer to the response headers: adds what the response hooks ask for; with `body_at_end` asks Envoy
    for the whole response body in one message at its end (honoured only with `allow_mode_override`)."""
    answer = pb.ProcessingResponse()
    headers = answer.response_headers
    headers.SetInParent()
    if client_headers:
        headers.response.header_mutation.set_headers.extend(
            header_option(name, value) for name, value in client_headers.items()
        )
    if body_at_end:
        answer.mode_override.response_body_mode = BUFFERED_PARTIAL
    return answer


def immediate(error: RequestError) -> pb.ProcessingResponse:
    """Ends the request with `error`'s status and JSON body; Envoy does not forward it."""
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=error.status),
            headers=pb.HeaderMutation(
                set_headers=[
                    header_option("content-type", "application/json"),
                    *(header_option(name, value) for name, value in error.headers.items()),
                ]
            ),
            body=error.json_bytes(),
            details=error.code,
        )
    )
