"""One HTTP request's ext_proc conversation, message by message, with the real Director, scheduler and plugins."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from kvroute.router.extproc import wire
from kvroute.router.extproc.exchange import BODY_CHUNK_BYTES, Exchange
from kvroute.router.extproc.processor import Processor, ResponseMode, api_of
from kvroute.router.framework import ApiKind, Endpoint, EndpointMetrics
from kvroute.router.runtime import RouterCore

BODY = json.dumps({"model": "m", "prompt": "hello there", "max_tokens": 8}).encode()
SSE = {"content-type": "text/event-stream"}


def sse(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "text": text}]}).encode() + b"\n\n"


class Conversation:
    def __init__(self, core: RouterCore, messages: Any, mode: ResponseMode = ResponseMode.FULL, **kwargs: Any):
        self.core = core
        self.m = messages
        self.processor = Processor(core.director, mode, **kwargs)
        self.exchange = Exchange(self.processor)

    def again(self) -> Conversation:
        """The next request's conversation through the same front door."""
        self.exchange = Exchange(self.processor)
        return self

    def send(self, message: Any) -> list[Any]:
        return [self.m.parse(a) for a in self.exchange.handle_message(message)]

    def route(self, body: bytes = BODY, **headers_kwargs: Any) -> list[Any]:
        """Headers then the body in two chunks (FULL_DUPLEX_STREAMED unless told): the answers to the last one."""
        assert self.send(self.m.request_headers(**headers_kwargs)) == []
        assert self.send(self.m.request_body(body[:5])) == []
        return self.send(self.m.request_body(body[5:], end_of_stream=True))

    @property
    def record(self) -> Any:
        return self.core.holder.current.plugins["recording-hook"].record

    def sample(self, name: str, **labels: str) -> float:
        return self.core.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def talk(extproc_core: RouterCore, envoy_messages: Any) -> Any:
    return lambda mode=ResponseMode.FULL, **kwargs: Conversation(extproc_core, envoy_messages, mode, **kwargs)


@pytest.mark.parametrize(
    ("method", "path", "api"),
    [
        ("POST", "/v1/completions", ApiKind.COMPLETIONS),
        ("POST", "/v1/chat/completions?x=1", ApiKind.CHAT),
        ("POST", "/openai/v1/chat/completions/", ApiKind.CHAT),
        ("GET", "/v1/completions", None),
        ("POST", "/v1/embeddings", None),
    ],
)
def test_which_requests_are_scheduled(method: str, path: str, api: ApiKind | None) -> None:
    assert api_of(method, path) is api


def test_full_duplex_answers_only_at_the_end_of_the_body_headers_first(talk: Any, envoy_messages: Any) -> None:
    c = talk()
    answers = c.route(headers={"x-request-id": "req-1"})

    headers, body = answers
    destination = c.m.set_headers(headers)["x-gateway-destination-endpoint"]
    assert destination in {"127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.4:8000"}
    assert c.m.destination_metadata(headers) == destination
    assert headers.request_headers.response.clear_route_cache
    assert c.m.streamed(body) == (BODY, True)
    assert c.record.pre_request == ["req-1"]


def test_the_destination_names_as_many_endpoints_as_allowed(talk: Any) -> None:
    headers = talk(max_destinations=2).route()[0]
    c = talk()

    listed = c.m.set_headers(headers)["x-gateway-destination-endpoint"].split(",")
    assert len(listed) == 2 and len(set(listed)) == 2
    assert c.m.destination_metadata(headers) == ",".join(listed)


def test_a_large_body_goes_back_in_chunks_with_one_end_of_stream(talk: Any) -> None:
    prompt = "x" * (3 * BODY_CHUNK_BYTES)
    body = json.dumps({"model": "m", "prompt": prompt}).encode()
    c = talk()
    answers = c.route(body)

    chunks = [c.m.streamed(a) for a in answers[1:]]
    assert b"".join(data for data, _ in chunks) == body
    assert [eos for _, eos in chunks] == [False, False, False, True]
    assert all(len(data) <= BODY_CHUNK_BYTES for data, _ in chunks)


def test_buffered_lets_headers_through_and_routes_on_the_body(talk: Any) -> None:
    c = talk()
    first = c.send(c.m.request_headers(body_mode=c.m.BUFFERED))
    answers = c.send(c.m.request_body(BODY, end_of_stream=True))

    assert first[0].WhichOneof("response") == "request_headers"
    assert not first[0].request_headers.response.HasField("header_mutation")
    (answer,) = answers
    assert answer.WhichOneof("response") == "request_body"
    assert "x-gateway-destination-endpoint" in c.m.set_headers(answer)
    assert c.m.destination_metadata(answer) == c.m.set_headers(answer)["x-gateway-destination-endpoint"]


def test_client_routing_headers_are_overwritten_or_removed(talk: Any) -> None:
    c = talk()
    sent = {"x-gateway-destination-endpoint": "10.0.0.1:80", "x-gateway-destination-endpoint-served": "10.0.0.1:80"}
    headers = c.route(headers={**sent, "x-prefiller-host-port": "10.0.0.2:80"})[0]

    assert c.m.set_headers(headers)["x-gateway-destination-endpoint"] != "10.0.0.1:80"
    assert sorted(c.m.removed_headers(headers)) == ["x-gateway-destination-endpoint-served", "x-prefiller-host-port"]


# What a client might send to make an engine pull KV blocks from an address of its choice.
STEERED = {"model": "m", "prompt": "hello there", "kv_transfer_params": {"do_remote_prefill": True, "remote_port": 1}}


def test_client_kv_transfer_params_never_go_upstream_in_full_duplex_mode(talk: Any) -> None:
    c = talk()
    answers = c.route(json.dumps(STEERED).encode())

    forwarded = b"".join(c.m.streamed(a)[0] for a in answers[1:])
    assert json.loads(forwarded) == {"model": "m", "prompt": "hello there"}
    assert c.m.streamed(answers[-1])[1]


def test_client_kv_transfer_params_never_go_upstream_in_buffered_mode(talk: Any) -> None:
    c = talk()
    c.send(c.m.request_headers({"content-length": "999"}, body_mode=c.m.BUFFERED))
    (answer,) = c.send(c.m.request_body(json.dumps(STEERED).encode(), end_of_stream=True))

    forwarded = answer.request_body.response.body_mutation.body
    assert json.loads(forwarded) == {"model": "m", "prompt": "hello there"}
    assert c.m.set_headers(answer)["content-length"] == str(len(forwarded))  # Envoy refuses a mismatch


def test_a_body_without_kv_transfer_params_goes_as_it_came(talk: Any) -> None:
    body = b'{"prompt" :"hello there",  "model":"m"}'  # any re-encoding would change these bytes
    c = talk()
    assert [c.m.streamed(a) for a in c.route(body)[1:]] == [(body, True)]

    c = talk()
    c.send(c.m.request_headers(body_mode=c.m.BUFFERED))
    (answer,) = c.send(c.m.request_body(body, end_of_stream=True))
    assert not answer.request_body.response.HasField("body_mutation")
    assert "content-length" not in c.m.set_headers(answer)


PD_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: prefill-filter
  - type: decode-filter
  - type: max-score-picker
  - type: pd-profile-handler
schedulingProfiles:
  - name: prefill
    plugins: [{pluginRef: prefill-filter}, {pluginRef: max-score-picker}]
  - name: decode
    plugins: [{pluginRef: decode-filter}, {pluginRef: max-score-picker}]
"""


def test_a_disaggregated_request_names_its_prefill_endpoint_to_the_decode_sidecar(
    registry: Any, envoy_messages: Any
) -> None:
    decode = Endpoint.create("127.0.0.2", 8000, labels={"llm-d.ai/role": "decode"})
    prefill = Endpoint.create("127.0.0.3", 8000, labels={"llm-d.ai/role": "prefill"})
    for endpoint in (decode, prefill):
        endpoint.metrics = EndpointMetrics(scraped_at=time.monotonic(), stale=False)
    c = Conversation(RouterCore([decode, prefill], registry, config_text=PD_CONFIG), envoy_messages)
    headers = c.route(headers={"x-prefiller-host-port": "10.0.0.9:80"})[0]

    assert c.m.set_headers(headers)["x-gateway-destination-endpoint"] == "127.0.0.2:8000"
    assert c.m.set_headers(headers)["x-prefiller-host-port"] == "127.0.0.3:8000"  # the plan's, not the client's
    assert "x-prefiller-host-port" not in c.m.removed_headers(headers)


@pytest.mark.parametrize(
    ("subset", "allowed"),
    [
        (["127.0.0.3:8000"], {"127.0.0.3:8000"}),
        ("127.0.0.2:8000, 127.0.0.4:8000", {"127.0.0.2:8000", "127.0.0.4:8000"}),
    ],
)
def test_the_subset_hint_restricts_the_candidates(talk: Any, subset: Any, allowed: set[str]) -> None:
    for _ in range(6):
        c = talk()
        headers = c.route(subset=subset)[0]
        assert c.m.set_headers(headers)["x-gateway-destination-endpoint"] in allowed


def test_an_empty_or_foreign_subset_is_503(talk: Any) -> None:
    for subset in ([], ["10.9.9.9:8000"]):
        c = talk()
        (answer,) = c.route(subset=subset)
        status, body, content_type = c.m.immediate(answer)
        assert (status, body["error"]["code"], content_type) == (503, "no_endpoints", "application/json")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({"prompt": "x"}).encode(), 400, "missing_model"),
    ],
)
def test_bad_bodies_are_immediate_json_errors(talk: Any, body: bytes, status: int, code: str) -> None:
    c = talk()
    (answer,) = c.route(body)

    answered, error, content_type = c.m.immediate(answer)
    assert (answered, error["error"]["code"], content_type) == (status, code, "application/json")
    assert c.sample("kvroute_requests_total", api="completions", code=str(status)) == 1


def test_too_large_bodies_are_413_by_announcement_or_by_size(extproc_core: RouterCore, talk: Any) -> None:
    limit = extproc_core.director.max_body_bytes
    c = talk()
    (announced,) = c.send(c.m.request_headers({"content-length": str(limit + 1)}))
    assert c.m.immediate(announced)[0] == 413

    c = talk()
    c.send(c.m.request_headers())
    (streamed,) = c.send(c.m.request_body(b"x" * (limit + 1)))
    assert c.m.immediate(streamed)[0] == 413
    assert c.send(c.m.request_body(b"more", end_of_stream=True)) == []


def test_a_body_mode_that_cannot_route_is_refused_with_the_reason(talk: Any) -> None:
    c = talk()
    (answer,) = c.send(c.m.request_headers(body_mode=c.m.STREAMED))

    status, body, _ = c.m.immediate(answer)
    assert status == 500
    assert "request_body_mode STREAMED" in body["error"]["message"]


def test_requests_that_are_not_scheduled_go_to_each_endpoint_in_turn(talk: Any) -> None:
    seen = []
    c = talk()
    for _ in range(3):
        (answer,) = c.again().send(c.m.request_headers(path="/v1/models", method="GET", end_of_stream=True))
        seen.append(c.m.set_headers(answer)["x-gateway-destination-endpoint"])
    (answer,) = c.again().send(c.m.request_headers(path="/v1/embeddings"))
    (echo,) = c.send(c.m.request_body(b'{"input": "x"}', end_of_stream=True))

    assert sorted(seen) == ["127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.4:8000"]
    assert c.m.streamed(echo) == (b'{"input": "x"}', True)
    assert c.record.pre_request == []


def test_full_mode_counts_tokens_relays_chunks_and_completes_once(talk: Any) -> None:
    c = talk()
    destination = c.m.set_headers(c.route(headers={"x-request-id": "r"})[0])["x-gateway-destination-endpoint"]
    (headers,) = c.send(c.m.response_headers(200, SSE))
    relayed = [c.send(c.m.response_body(sse(t)))[0] for t in ("a", "b", "c")]
    (last,) = c.send(c.m.response_body(b"data: [DONE]\n\n", end_of_stream=True))
    c.exchange.close()

    assert c.m.set_headers(headers) == {"x-served-by": destination}  # what the response hooks asked for
    assert [c.m.streamed(r) for r in relayed] == [(sse(t), False) for t in ("a", "b", "c")]
    assert c.m.streamed(last) == (b"data: [DONE]\n\n", True)
    assert c.record.chunk_tokens == [1, 1, 1, 0]  # the last chunk, [DONE], carries none
    ((completion),) = c.record.completions
    assert (completion.endpoint, completion.error, completion.status, completion.output_tokens) == (
        destination,
        None,
        200,
        3,
    )
    assert c.sample("kvroute_requests_in_flight", endpoint=destination) == 0


def test_streamed_response_chunks_are_let_through_without_copying_them_back(talk: Any) -> None:
    c = talk()
    c.route(response_mode=c.m.STREAMED)
    c.send(c.m.response_headers(200, SSE))
    (answer,) = c.send(c.m.response_body(sse("a"), end_of_stream=True))

    assert answer.WhichOneof("response") == "response_body"
    assert not answer.response_body.response.HasField("body_mutation")
    assert c.record.completions[0].output_tokens == 1


def test_the_gateway_can_say_which_endpoint_served(talk: Any) -> None:
    c = talk(max_destinations=2)
    fallback = c.m.set_headers(c.route()[0])["x-gateway-destination-endpoint"].split(",")[1]
    c.send(c.m.response_headers(200, SSE, served=fallback))
    c.send(c.m.response_body(b"", end_of_stream=True))

    assert c.record.completions[0].endpoint == fallback


@pytest.mark.parametrize("after_headers", [False, True])
def test_a_stream_closed_before_the_response_ended_completes_once_as_499(talk: Any, after_headers: bool) -> None:
    c = talk()
    c.route()
    if after_headers:
        c.send(c.m.response_headers(200, SSE))
        c.send(c.m.response_body(sse("a")))
    c.exchange.close()
    c.exchange.close()

    ((completion),) = c.record.completions
    assert (completion.error, completion.status) == ("client disconnected", 200 if after_headers else 0)
    assert c.sample("kvroute_requests_total", api="completions", code="499") == 1


def test_light_mode_completes_at_the_end_of_the_stream_with_an_estimate(talk: Any) -> None:
    c = talk(ResponseMode.LIGHT)
    c.processor.estimator.rate = 1e9  # any elapsed time is more than max_tokens' worth
    c.route(response_mode=c.m.NONE)
    (headers,) = c.send(c.m.response_headers(200, SSE))
    assert c.record.completions == []
    c.exchange.close()

    assert not headers.HasField("mode_override")
    ((completion),) = c.record.completions
    assert (completion.error, completion.status, completion.output_tokens) == (None, 200, 8)  # max_tokens


def test_light_mode_asks_for_a_non_streamed_body_at_its_end_when_it_can(talk: Any) -> None:
    c = talk(ResponseMode.LIGHT)
    c.send(c.m.request_headers(body_mode=c.m.BUFFERED, response_mode=c.m.NONE))
    c.send(c.m.request_body(BODY, end_of_stream=True))
    (headers,) = c.send(c.m.response_headers(200, {"content-type": "application/json"}))
    usage = {"usage": {"prompt_tokens": 3, "completion_tokens": 5}, "choices": []}
    (body,) = c.send(c.m.response_body(json.dumps(usage).encode(), end_of_stream=True))

    assert headers.mode_override.response_body_mode == c.m.BUFFERED_PARTIAL
    assert body.WhichOneof("response") == "response_body"
    assert c.record.completions[0].output_tokens == 5


def test_light_mode_never_asks_for_a_stream(talk: Any) -> None:
    c = talk(ResponseMode.LIGHT)
    c.send(c.m.request_headers(body_mode=c.m.BUFFERED, response_mode=c.m.NONE))
    c.send(c.m.request_body(BODY, end_of_stream=True))
    (headers,) = c.send(c.m.response_headers(200, SSE))

    assert not headers.HasField("mode_override")


def test_request_trailers_end_the_body(talk: Any) -> None:
    c = talk()
    c.send(c.m.request_headers())
    c.send(c.m.request_body(BODY))
    answers = c.send(c.m.request_trailers())

    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body", "request_trailers"]
    assert c.m.streamed(answers[1]) == (BODY, False)


PREPARED_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: recording-hook
  - type: stub-preparer
  - type: active-request-scorer
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: active-request-scorer
"""


async def test_with_preparers_the_request_is_answered_once_prepared(talk: Any) -> None:
    c = talk()
    c.core.holder.reload_text(PREPARED_CONFIG)

    assert c.route(headers={"x-request-id": "p-1"}) == []
    assert c.exchange.preparing
    answers = [c.m.parse(a) for a in await c.exchange.route_prepared()]

    assert not c.exchange.preparing
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body"]
    assert c.m.streamed(answers[1]) == (BODY, True)
    assert c.exchange.handle is not None
    assert c.exchange.handle.request.token_ids == [3, len("hello there")]
    assert c.record.pre_request == ["p-1"]
    c.exchange.close()


async def test_with_preparers_the_trailers_answer_follows_the_routing(talk: Any) -> None:
    c = talk()
    c.core.holder.reload_text(PREPARED_CONFIG)
    c.send(c.m.request_headers())
    c.send(c.m.request_body(BODY))

    assert c.send(c.m.request_trailers()) == []
    answers = [c.m.parse(a) for a in await c.exchange.route_prepared()]
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body", "request_trailers"]
    c.exchange.close()


async def test_with_preparers_a_bad_body_is_still_an_immediate_400(talk: Any) -> None:
    c = talk()
    c.core.holder.reload_text(PREPARED_CONFIG)
    c.send(c.m.request_headers(body_mode=c.m.BUFFERED))
    assert c.send(c.m.request_body(b"{", end_of_stream=True)) == []

    (answer,) = [c.m.parse(a) for a in await c.exchange.route_prepared()]
    status, body, _ = c.m.immediate(answer)
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    assert c.exchange.handle is None


# GIE conformance mode (`--gie-conformance`).

SELECT = "test-epp-endpoint-selection"
SERVED = "x-conformance-test-served-endpoint"


def destination(c: Conversation, answer: Any) -> str:
    return str(c.m.set_headers(answer)["x-gateway-destination-endpoint"])


@pytest.mark.parametrize(
    ("selection", "allowed"),
    [
        ("127.0.0.3", {"127.0.0.3:8000"}),  # as the suite sends it: pod IPs
        ("127.0.0.2:8000, 127.0.0.4", {"127.0.0.2:8000", "127.0.0.4:8000"}),
    ],
)
def test_conformance_mode_schedules_only_among_the_selected_endpoints(
    talk: Any, selection: str, allowed: set[str]
) -> None:
    c = talk(gie_conformance=True, max_destinations=2)
    for _ in range(6):
        listed = destination(c, c.again().route(headers={SELECT: selection})[0]).split(",")
        assert set(listed) <= allowed  # fallbacks too
        assert len(listed) == min(2, len(allowed))


def test_conformance_mode_names_the_pick_for_the_echo_server(talk: Any) -> None:
    c = talk(gie_conformance=True)
    headers = c.route(headers={SELECT: "127.0.0.4"})[0]

    assert c.m.set_headers(headers)["x-echo-set-header"] == f"{SERVED}:127.0.0.4:8000"


def test_the_selection_replaces_the_subset_hint(talk: Any) -> None:
    c = talk(gie_conformance=True)

    assert destination(c, c.route(headers={SELECT: "127.0.0.4"}, subset=["127.0.0.2:8000"])[0]) == "127.0.0.4:8000"
    assert destination(c, c.again().route(headers={SELECT: ""}, subset=["127.0.0.2:8000"])[0]) == "127.0.0.2:8000"


@pytest.mark.parametrize("selection", ["10.9.9.9", "127.0.0.3:9000", ","])
def test_a_selection_naming_no_endpoint_of_the_pool_is_503(talk: Any, selection: str) -> None:
    c = talk(gie_conformance=True)
    (scheduled,) = c.route(headers={SELECT: selection})
    (passed,) = c.again().send(c.m.request_headers({SELECT: selection}, path="/v1/models", method="GET"))

    for answer in (scheduled, passed):
        status, body, _ = c.m.immediate(answer)
        assert (status, body["error"]["code"]) == (503, "no_endpoints")
    assert c.record.pre_request == []


def test_requests_passed_through_go_only_to_the_selection_in_turn(talk: Any) -> None:
    c = talk(gie_conformance=True)
    seen = []
    for _ in range(4):
        (answer,) = c.again().send(c.m.request_headers({SELECT: "127.0.0.2,127.0.0.4"}, path="/conformance-test"))
        seen.append(destination(c, answer))
        assert c.m.set_headers(answer)["x-echo-set-header"] == f"{SERVED}:{seen[-1]}"

    assert sorted(seen) == ["127.0.0.2:8000", "127.0.0.2:8000", "127.0.0.4:8000", "127.0.0.4:8000"]


def test_conformance_mode_reports_the_served_endpoint_on_every_response(talk: Any) -> None:
    c = talk(gie_conformance=True)
    picked = destination(c, c.route()[0])
    (scheduled,) = c.send(c.m.response_headers(200, SSE, served="127.0.0.9:3000"))
    c.again().send(c.m.request_headers(path="/v1/models", method="GET", end_of_stream=True))
    (passed,) = c.send(c.m.response_headers(200, served="127.0.0.3:8000"))

    # Verbatim, as the gateway says, next to what the response hooks add.
    assert c.m.set_headers(scheduled) == {"x-served-by": picked, SERVED: "127.0.0.9:3000"}
    assert c.m.set_headers(passed) == {SERVED: "127.0.0.3:8000"}


def test_conformance_mode_reports_missing_served_metadata_as_a_failure(talk: Any) -> None:
    c = talk(gie_conformance=True)
    c.route()
    (bare,) = c.send(c.m.response_headers(200))
    c.again().route()
    message = c.m.response_headers(200)
    message.metadata_context.filter_metadata["envoy.lb"].update({"x-gateway-destination-endpoint": "127.0.0.2:8000"})
    (lb_only,) = c.send(message)

    assert c.m.set_headers(bare)[SERVED] == "fail: missing envoy lb metadata"
    assert c.m.set_headers(lb_only)[SERVED] == "fail: missing destination endpoint served metadata"


def test_without_conformance_mode_the_test_headers_mean_nothing(talk: Any) -> None:
    c = talk()
    headers = c.route(headers={SELECT: "127.0.0.4"}, subset=["127.0.0.2:8000"])[0]
    (response,) = c.send(c.m.response_headers(200, SSE, served="127.0.0.2:8000"))
    (passed,) = c.again().send(c.m.request_headers({SELECT: "10.9.9.9"}, path="/v1/models", method="GET"))
    (passed_response,) = c.send(c.m.response_headers(200, served="127.0.0.3:8000"))

    assert destination(c, headers) == "127.0.0.2:8000"  # the subset hint, not the test header
    assert "x-echo-set-header" not in c.m.set_headers(headers)
    assert SERVED not in c.m.set_headers(response)
    assert passed.WhichOneof("response") == "request_headers"  # routed, not refused
    assert passed_response == c.m.parse(wire.CONTINUE_RESPONSE_HEADERS)
