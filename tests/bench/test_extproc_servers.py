"""The gRPC server comparison (`python -m kvroute.bench.extproc_servers`): every candidate serves the light
exchange, plaintext and TLS, and the table spans the rounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvroute.bench import extproc_driver, extproc_servers
from kvroute.bench.extproc_candidates import CANDIDATES, ROUTED, Candidate, LightStream
from kvroute.router.extproc import tls
from tests.support import free_port


def test_the_light_work_routes_at_the_end_of_the_body_and_sends_the_body_back() -> None:
    conversation = extproc_driver.Conversation([b'{"model": "m"}'], 0, False)
    work = LightStream()

    assert work.answers(conversation.request_headers.SerializeToString()) == ()
    assert work.answers(conversation.bodies[0].SerializeToString()) == ()
    routed, body = work.answers(conversation.end.SerializeToString())
    assert routed == ROUTED
    streamed = pb.ProcessingResponse.FromString(body).request_body.response.body_mutation.streamed_response
    assert (streamed.body, streamed.end_of_stream) == (b'{"model": "m"}', True)
    answer = work.answers(conversation.response_headers.SerializeToString())
    assert [pb.ProcessingResponse.FromString(a).WhichOneof("response") for a in answer] == ["response_headers"]


@pytest.mark.parametrize(
    "name", ["grpc.aio, uvloop (the door before)", "grpc sync, 8 threads", "h2 door, uvloop", "h2 door, asyncio loop"]
)
@pytest.mark.parametrize("secure", [False, True])
async def test_a_candidate_serves_the_light_exchange(name: str, secure: bool, tmp_path: Path) -> None:
    tls_dir = None
    if secure:
        key, cert = tls.self_signed(extproc_servers.HOST)
        (tmp_path / tls.KEY_FILE).write_bytes(key)
        (tmp_path / tls.CERT_FILE).write_bytes(cert)
        tls_dir = str(tmp_path)

    result = await extproc_servers.measure(
        name,
        port=free_port(extproc_servers.HOST),
        tls_dir=tls_dir,
        streams=40,
        concurrency=4,
        body_bytes=8 * 1024,
    )

    assert result.streams_per_s > 0
    assert result.router_cpu_us >= 0


def test_the_table_shows_a_span_only_when_rounds_differ_by_more_than_a_tenth() -> None:
    results = [
        extproc_servers.ServerResult("steady", [500.0, 540.0], [300.0, 320.0]),
        extproc_servers.ServerResult("noisy", [400.0, 900.0], [1000.0, 1500.0]),
    ]

    rows = extproc_servers.table(results).splitlines()[2:]

    assert rows == ["| steady | 300 | 500 |", "| noisy | 1,000-1,500 | 400-900 |"]


def test_candidates_whose_stack_is_missing_are_skipped() -> None:
    assert all(extproc_servers.available(spec) for spec in CANDIDATES.values() if spec.requires is None)
    assert not extproc_servers.available(Candidate("grpclib", requires="kvroute_no_such_module"))
