"""The hand-encoded answers are byte for byte what protobuf would produce."""

from __future__ import annotations

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvroute.router.extproc import wire


def _protobuf(phase: str, data: bytes, end_of_stream: bool) -> bytes:
    streamed = pb.StreamedBodyResponse(body=data, end_of_stream=end_of_stream)
    body = pb.BodyResponse(response=pb.CommonResponse(body_mutation=pb.BodyMutation(streamed_response=streamed)))
    return pb.ProcessingResponse(**{phase: body}).SerializeToString()


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 65_536, 2_097_153])
@pytest.mark.parametrize("end_of_stream", [False, True])
@pytest.mark.parametrize(
    ("phase", "field"), [("request_body", wire.REQUEST_BODY), ("response_body", wire.RESPONSE_BODY)]
)
def test_streamed_bodies_encode_like_protobuf(size: int, end_of_stream: bool, phase: str, field: bytes) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)

    assert wire.streamed_body(field, data, end_of_stream) == _protobuf(phase, data, end_of_stream)


def test_constant_answers_parse_as_the_empty_answer_of_their_phase() -> None:
    expected = {
        wire.CONTINUE_REQUEST_HEADERS: "request_headers",
        wire.CONTINUE_REQUEST_BODY: "request_body",
        wire.CONTINUE_REQUEST_TRAILERS: "request_trailers",
        wire.CONTINUE_RESPONSE_HEADERS: "response_headers",
        wire.CONTINUE_RESPONSE_BODY: "response_body",
        wire.CONTINUE_RESPONSE_TRAILERS: "response_trailers",
    }
    for data, phase in expected.items():
        assert pb.ProcessingResponse.FromString(data).WhichOneof("response") == phase


def test_serialize_passes_bytes_through_and_serialises_messages() -> None:
    message = pb.ProcessingResponse(request_headers=pb.HeadersResponse())

    assert wire.serialize(wire.CONTINUE_REQUEST_BODY) is wire.CONTINUE_REQUEST_BODY
    assert wire.serialize(message) == message.SerializeToString()
