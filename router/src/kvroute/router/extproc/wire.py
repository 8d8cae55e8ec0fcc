"""Answers on the hot path, as bytes: the constant ones serialised once, and body chunks encoded by hand.

`serialize`, which turns the ext_proc call's answers into bytes, passes `bytes` through unchanged, so the
answers that never vary (let the headers / body / trailers continue) cost no protobuf work at all, and a body
chunk relayed in FULL_DUPLEX_STREAMED mode is encoded with a single copy of its bytes instead of five nested
message objects and a serialisation. The encoding is the protobuf wire format of

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
_RESPONSE = b"\x0a"  # BodyResponse.response = 1
_BODY_MUTATION = b"\x1a"  # CommonResponse.body_mutation = 3
_STREAMED = b"\x1a"  # BodyMutation.streamed_response = 3
_BODY = b"\x0a"  # StreamedBodyResponse.body = 1
_END_OF_STREAM = b"\x10\x01"  # StreamedBodyResponse.end_of_stream = 2, true

# Already serialised bytes, or a protobuf message (protobuf ships no type information mypy reads here).
Answer: TypeAlias = Any


def serialize(answer: Answer) -> bytes:
    """An answer as bytes: bytes are already serialised."""
    if answer.__class__ is bytes:
        return answer
    data: bytes = answer.SerializeToString()
    return data


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def streamed_body(field: bytes, data: bytes | memoryview, end_of_stream: bool) -> bytes:
    """A body chunk sent back in FULL_DUPLEX_STREAMED mode; `field` is `REQUEST_BODY` or `RESPONSE_BODY`. `data` is
    copied once, into the answer."""
    size = len(data)
    body = b"".join((_BODY, _varint(size))) if size else b""
    tail = _END_OF_STREAM if end_of_stream else b""
    length = len(body) + size + len(tail)  # of the StreamedBodyResponse, then of each message around it
    streamed = _varint(length)
    length += 1 + len(streamed)
    mutation = _varint(length)
    length += 1 + len(mutation)
    common = _varint(length)
    length += 1 + len(common)
    head = b"".join((field, _varint(length), _RESPONSE, common, _BODY_MUTATION, mutation, _STREAMED, streamed, body))
    return b"".join((head, data, tail))
