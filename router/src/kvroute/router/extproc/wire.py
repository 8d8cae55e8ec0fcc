"""Answers on the hot path, as bytes: the constant ones serialised once, and body chunks encoded by hand.

The gRPC method's response serializer (`serialize`) passes `bytes` through unchanged, so the answers that never
vary (let the headers / body / trailers continue) cost no protobuf work at all, and a body chunk relayed in
FULL_DUPLEX_STREAMED mode is encoded with a single copy of its bytes instead of five nested message objects and
a serialisation. The encoding is the protobuf wire format of

    ProcessingResponse{request_body | response_body: BodyResponse{response: CommonResponse{
        body_mutation: BodyMutation{streamed_response: StreamedBodyResponse{body, end_of_stream}}}}}

which tests check against protobuf's own serialisation.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

CONTINUE_REQUEST_HEADERS: bytes = pb.ProcessingResponse(request_headers=pb.HeadersResponse()).SerializeToString()
CONTINUE_REQUEST_BODY: bytes = pb.ProcessingResponse(request_body=pb.BodyResponse()).SerializeToString()
CONTINUE_REQUEST_TRAILERS: bytes = pb.ProcessingResponse(request_trailers=pb.TrailersResponse()).SerializeToString()
CONTINUE_RESPONSE_HEADERS: bytes = pb.ProcessingResponse(response_headers=pb.HeadersResponse()).SerializeToString()
CONTINUE_RESPONSE_BODY: bytes = pb.ProcessingResponse(response_body=pb.BodyResponse()).SerializeToString()
CONTINUE_RESPONSE_TRAILERS: bytes = pb.ProcessingResponse(response_trailers=pb.TrailersResponse()).SerializeToString()

# Field tags (field number << 3 | wire type 2, length-delimited).
REQUEST_BODY = b"\x1a"  # ProcessingResponse.request_body = 3
RESPONSE_BODY = b"\x22"  # ProcessingResponse.response_body = 4
_RESPONSE = 0x0A  # BodyResponse.response = 1
_BODY_MUTATION = 0x1A  # CommonResponse.body_mutation = 3
_STREAMED = 0x1A  # BodyMutation.streamed_response = 3
_BODY = 0x0A  # StreamedBodyResponse.body = 1
_END_OF_STREAM = b"\x10\x01"  # StreamedBodyResponse.end_of_stream = 2, true

# Already serialised bytes, or a protobuf message (protobuf ships no type information mypy reads here).
Answer: TypeAlias = Any


def serialize(answer: Answer) -> bytes:
    """The gRPC response serializer: bytes are already serialised."""
    if answer.__class__ is bytes:
        return answer
    data: bytes = answer.SerializeToString()
    return data


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _size(payload: int) -> int:
    """Bytes taken by a length-delimited field (tag, length, payload) whose payload is `payload` bytes."""
    return 1 + len(_varint(payload)) + payload


def streamed_body(field: bytes, data: bytes | memoryview, end_of_stream: bool) -> bytes:
    """A body chunk sent back in FULL_DUPLEX_STREAMED mode; `field` is `REQUEST_BODY` or `RESPONSE_BODY`. `data` is
    copied once, into the answer."""
    inner = (_size(len(data)) if data else 0) + (2 if end_of_stream else 0)
    mutation = _size(inner)
    common = _size(mutation)
    head = bytearray(field)
    head += _varint(_size(common))
    head.append(_RESPONSE)
    head += _varint(common)
    head.append(_BODY_MUTATION)
    head += _varint(mutation)
    head.append(_STREAMED)
    head += _varint(inner)
    if data:
        head.append(_BODY)
        head += _varint(len(data))
    return b"".join((head, data, _END_OF_STREAM if end_of_stream else b""))
