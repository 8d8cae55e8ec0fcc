"""One HTTP request's ext_proc conversation with Envoy, translated into Director calls.

Request phase. `POST .../completions` and `POST .../chat/completions` are scheduled; the request body is
buffered to its end (Envoy's `request_body_mode` is read from the first message's `protocol_config`):

- FULL_DUPLEX_STREAMED (GIE's mode; also assumed when Envoy does not say): nothing is answered until the body
  ends; then the headers answer carrying the destination, then the body in chunks of at most `BODY_CHUNK_BYTES`,
  the last one with end of stream (Envoy sends it upstream chunked);
- BUFFERED: the headers are let through at once (Envoy holds them until the body is answered); the body answer
  carries the destination.

The body forwarded is the client's, minus any `kv_transfer_params` it carried (`prefill.client_bytes`, as the proxy
does): only the router's own may tell an engine where to pull KV blocks from. A body without them goes as it came
(in BUFFERED mode, not sent back at all).

When the configuration prepares requests (`Director.start` returns an awaitable, e.g. tokenizing for the
precise prefix scorer), the buffered request is left pending (`preparing`) and the caller awaits `route_prepared`
for its answers (and any trailers answer), which are then exactly those above.

Any other request (another path or method, no body, or `request_body_mode: NONE`) is not scheduled: it goes to
the next of the candidate endpoints in turn, decided on its headers (e.g. `GET /v1/models`). Other body modes
cannot route on the body and are answered with a 500 that says so. Errors of the Director (400 bad body, 413,
429 shed, 503 no endpoint) are `ImmediateResponse`s. The subset hint restricts the candidates of both kinds.
In GIE conformance mode (`Processor.gie_conformance`, see `conformance`) the test header
`test-epp-endpoint-selection` replaces the subset hint and the upstream request names the primary pick for the
suite's echo server.

Response phase, for a scheduled request: the response headers go to `on_response_headers` (the endpoint that
served is the gateway's `...-served` metadata when present, else the primary pick) and are answered with the
headers the response hooks ask for. Body chunks, when Envoy sends them, go to `on_response_chunk` and are relayed
unchanged (sent back in FULL_DUPLEX_STREAMED mode, let through otherwise); the end of the body or the trailers
complete the request. In conformance mode the response headers of every request, scheduled or not, also get the
served endpoint's report for the suite.

Response modes (`ResponseMode`): `full` expects every body chunk (exact token counts). `light` expects Envoy to
send no response body: the end of the response is the end of the gRPC stream, and the output tokens are
estimated (`estimate`); for a non-streamed answer with a BUFFERED request body it asks Envoy (mode override) for
the whole body in one message at its end, which gives the exact usage.

`close` ends the request exactly once: success when the response ended (or, with no body expected, when it had
headers), otherwise `on_disconnect` (recorded as 499); a router cancelled mid-request ends the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence

from kvroute.router.extproc import conformance, protocol, wire
from kvroute.router.extproc.estimate import max_tokens_of
from kvroute.router.extproc.processor import Processor, ResponseMode, api_of
from kvroute.router.extproc.protocol import BUFFERED, FULL_DUPLEX_STREAMED, NONE, ProcessingRequest
from kvroute.router.framework import Endpoint
from kvroute.router.requestcontrol.body import REQUEST_ID_HEADER, RequestError, is_routing_header
from kvroute.router.requestcontrol.handle import RequestHandle
from kvroute.router.requestcontrol.intake import Intake
from kvroute.router.requestcontrol.prefill import PREFILLER_HEADER, client_bytes
from kvroute.router.requestcontrol.response import EVENT_STREAM

BODY_CHUNK_BYTES = 64 * 1024
_NOTHING: tuple[wire.Answer, ...] = ()
_ROUTED_MODES = (FULL_DUPLEX_STREAMED, BUFFERED)


class Exchange:
    __slots__ = (
        "_body_expected",
        "_endpoint",
        "_finished",
        "_forwarded_at",
        "_headers",
        "_intake",
        "_passthrough",
        "_pending",
        "_processor",
        "_request_mode",
        "_response_mode",
        "_status",
        "_subset",
        "handle",
    )

    def __init__(self, processor: Processor) -> None:
        self._processor = processor
        self._request_mode = FULL_DUPLEX_STREAMED
        self._response_mode = FULL_DUPLEX_STREAMED
        self._intake: Intake | None = None  # the body of a request to schedule, until it is routed or refused
        self._headers: list[tuple[str, str]] = []
        self._subset: frozenset[str] | None = None
        self._passthrough = False
        self._pending: tuple[Awaitable[RequestHandle], bool, Sequence[wire.Answer]] | None = None
        self.handle: RequestHandle | None = None
        self._endpoint: Endpoint | None = None
        self._forwarded_at = 0.0
        self._status = 0
        self._body_expected = True
        self._finished = False

    def handle_message(self, message: ProcessingRequest) -> Sequence[wire.Answer]:
        """The answers to one message from Envoy, in order (often none or one)."""
        kind = message.WhichOneof("request")
        if kind == "response_body":
            body = message.response_body
            return self._response_body(body.body, body.end_of_stream)
        if kind == "request_body":
            body = message.request_body
            return self._request_body(body.body, body.end_of_stream)
        if kind == "request_headers":
            return self._request_headers(message)
        if kind == "response_headers":
            return self._response_headers(message)
        if kind == "request_trailers":
            if self._passthrough or self.handle is not None:
                return (wire.CONTINUE_REQUEST_TRAILERS,)
            return self._route(end_of_stream=False, after=(wire.CONTINUE_REQUEST_TRAILERS,))
        if kind == "response_trailers":
            self._finish()
            return (wire.CONTINUE_RESPONSE_TRAILERS,)
        return _NOTHING

    # Request phase.

    def _request_headers(self, message: ProcessingRequest) -> Sequence[wire.Answer]:
        if message.HasField("protocol_config"):
            config = message.protocol_config
            self._request_mode = config.request_body_mode
            self._response_mode = config.response_body_mode
        if message.HasField("metadata_context"):
            self._subset = protocol.subset_hint(message.metadata_context)
        headers = message.request_headers
        method = path = length = ""
        kept = self._headers
        for name, value in protocol.read_headers(headers):
            if name[0] == ":":
                if name == ":method":
                    method = value
                elif name == ":path":
                    path = value
            else:
                if name == "content-length":
                    length = value
                kept.append((name, value))
        if self._processor.gie_conformance:
            selected = conformance.selection(kept)
            if selected is not None:
                self._subset = selected
        api = api_of(method, path)
        mode = self._request_mode
        if api is None or headers.end_of_stream or mode == NONE:
            return self._pass_through()
        if mode not in _ROUTED_MODES:
            message_text = (
                f"the gateway's ext_proc request_body_mode {protocol.mode_name(mode)} cannot route on the body; "
                "configure FULL_DUPLEX_STREAMED or BUFFERED"
            )
            return (protocol.immediate(RequestError(500, message_text, "unsupported_processing_mode")),)
        try:
            self._intake = self._processor.director.open(api, int(length) if length.isdigit() else None)
        except RequestError as error:
            return (protocol.immediate(error),)
        return (wire.CONTINUE_REQUEST_HEADERS,) if mode == BUFFERED else _NOTHING

    def _request_body(self, data: bytes, end_of_stream: bool) -> Sequence[wire.Answer]:
        if self._passthrough:
            if self._request_mode == FULL_DUPLEX_STREAMED:
                return (wire.streamed_body(wire.REQUEST_BODY, data, end_of_stream),)
            return (wire.CONTINUE_REQUEST_BODY,)
        intake = self._intake
        if intake is None or self.handle is not None:
            return _NOTHING  # answered already (an error), or a body after the trailers
        try:
            intake.add(data)
        except RequestError as error:
            self._intake = None
            return (protocol.immediate(error),)
        # A BUFFERED body is whole even when trailers follow (then without end of stream): Envoy awaits its answer.
        if end_of_stream or self._request_mode == BUFFERED:
            return self._route(end_of_stream=end_of_stream)
        return _NOTHING

    @property
    def preparing(self) -> bool:
        """The request awaits its preparation: the caller awaits `route_prepared` before the next message."""
        return self._pending is not None

    async def route_prepared(self) -> Sequence[wire.Answer]:
        """The answers routing the request once the Director prepared and scheduled it."""
        pending, self._pending = self._pending, None
        if pending is None:
            return _NOTHING
        started, end_of_stream, after = pending
        try:
            handle = await started
        except RequestError as error:
            self._intake = None
            return (protocol.immediate(error), *after)
        return (*self._routed(handle, end_of_stream), *after)

    def _route(self, *, end_of_stream: bool, after: Sequence[wire.Answer] = _NOTHING) -> Sequence[wire.Answer]:
        """Schedules the buffered request; `after` are answers to send once it is routed. With preparers the
        request is left pending (`preparing`) and nothing is answered yet."""
        intake = self._intake
        if intake is None:
            return after
        try:
            started = self._processor.director.start(intake.api, intake.body, self._headers, self._subset)
        except RequestError as error:
            self._intake = None
            return (protocol.immediate(error), *after)
        if not isinstance(started, RequestHandle):
            self._pending = (started, end_of_stream, after)
            return _NOTHING
        answers = self._routed(started, end_of_stream)
        return (*answers, *after) if after else answers

    def _routed(self, handle: RequestHandle, end_of_stream: bool) -> Sequence[wire.Answer]:
        processor = self._processor
        self.handle = handle
        raw = client_bytes(handle.request.body, handle.raw_body)
        self._endpoint = handle.endpoint
        destination = ",".join(e.id for e in handle.endpoints[: processor.max_destinations])
        headers = self._upstream_headers(handle, destination)
        common = protocol.routing(headers, [name for name in self._removed_headers() if name not in headers])
        self._forwarded_at = time.perf_counter()
        if self._request_mode == BUFFERED:
            return (protocol.routed_body(common, destination, None if raw is handle.raw_body else raw),)
        answers: list[wire.Answer] = [protocol.routed_headers(common, destination)]
        if len(raw) <= BODY_CHUNK_BYTES:
            answers.append(wire.streamed_body(wire.REQUEST_BODY, raw, end_of_stream))
        else:
            view = memoryview(raw)
            for start in range(0, len(raw), BODY_CHUNK_BYTES):
                last = start + BODY_CHUNK_BYTES >= len(raw)
                chunk = view[start : start + BODY_CHUNK_BYTES]
                answers.append(wire.streamed_body(wire.REQUEST_BODY, chunk, end_of_stream and last))
        return answers

    def _upstream_headers(self, handle: RequestHandle, destination: str) -> dict[str, str]:
        headers = {protocol.DESTINATION_HEADER: destination, **handle.result.headers}
        plan = handle.result.disaggregation
        if plan is not None:  # the decode pod's sidecar runs the prefill (llm-d's P/D protocol)
            headers[PREFILLER_HEADER] = plan.prefill_host_port
        if self._processor.gie_conformance:
            headers.update(conformance.echoed(handle.endpoint.id))
        request_id = handle.request.request_id
        if handle.request.headers.get(REQUEST_ID_HEADER) != request_id:
            headers[REQUEST_ID_HEADER] = request_id
        return headers

    def _removed_headers(self) -> list[str]:
        """Routing headers the client sent and nothing overwrites: no client-steered routing."""
        return [name for name, _ in self._headers if is_routing_header(name) and name != protocol.DESTINATION_HEADER]

    def _pass_through(self) -> Sequence[wire.Answer]:
        self._passthrough = True
        endpoint = self._processor.next_endpoint(self._subset)
        if endpoint is None:
            error = RequestError(503, "no endpoint can serve the request", "no_endpoints")
            return (protocol.immediate(error),)
        headers = {protocol.DESTINATION_HEADER: endpoint.id}
        if self._processor.gie_conformance:
            headers.update(conformance.echoed(endpoint.id))
        common = protocol.routing(headers, self._removed_headers())
        return (protocol.routed_headers(common, endpoint.id),)

    # Response phase.

    def _response_headers(self, message: ProcessingRequest) -> Sequence[wire.Answer]:
        handle = self.handle
        reported = conformance.served(message.metadata_context) if self._processor.gie_conformance else None
        if handle is None or handle.done:
            return (protocol.response_headers(reported, False),) if reported else (wire.CONTINUE_RESPONSE_HEADERS,)
        if message.HasField("protocol_config"):
            self._response_mode = message.protocol_config.response_body_mode
        headers = dict(protocol.read_headers(message.response_headers))
        status_text = headers.pop(":status", "")
        status = int(status_text) if status_text.isdigit() else 0
        self._status = status or 502
        if message.HasField("metadata_context"):
            served = protocol.served_endpoint(message.metadata_context)
            if served is not None:
                self._endpoint = next((e for e in handle.endpoints if e.id == served), self._endpoint)
        endpoint = self._endpoint or handle.endpoint
        handle.on_response_headers(endpoint, status, headers)
        streamed = headers.get("content-type", "").startswith(EVENT_STREAM)
        body_at_end = (
            self._processor.response_mode is ResponseMode.LIGHT
            and not streamed
            and self._response_mode == NONE
            and self._request_mode == BUFFERED
        )
        self._body_expected = self._response_mode != NONE or body_at_end
        if message.response_headers.end_of_stream:
            self._finish()
        client_headers = handle.response.client_headers
        if reported:
            client_headers = {**client_headers, **reported}
        if not client_headers and not body_at_end:
            return (wire.CONTINUE_RESPONSE_HEADERS,)
        return (protocol.response_headers(client_headers, body_at_end),)

    def _response_body(self, data: bytes, end_of_stream: bool) -> Sequence[wire.Answer]:
        handle = self.handle
        if handle is not None and not handle.done and self._endpoint is not None:
            if data:
                handle.on_response_chunk(self._endpoint, data)
            if end_of_stream:
                self._finish()
        if self._response_mode == FULL_DUPLEX_STREAMED:
            return (wire.streamed_body(wire.RESPONSE_BODY, data, end_of_stream),)
        return (wire.CONTINUE_RESPONSE_BODY,)

    def _finish(self) -> None:
        """The response ended: a counted output calibrates the estimate, then the request completes."""
        handle = self.handle
        if handle is None or handle.done:
            return
        self._finished = True
        tokens = handle.response.output_tokens
        if tokens:
            self._processor.estimator.observe(tokens, time.perf_counter() - self._forwarded_at)
        handle.complete()

    def close(self) -> None:
        """The stream is over (ended by Envoy, reset, or cancelled): completes the request if nothing else did."""
        pending, self._pending = self._pending, None
        if pending is not None and asyncio.iscoroutine(pending[0]):
            pending[0].close()  # never awaited: the stream ended before the request could be routed
        handle = self.handle
        if handle is None or handle.done:
            return
        if self._status and not self._body_expected:
            if self._endpoint is not None:
                seconds = time.perf_counter() - self._forwarded_at
                estimate = self._processor.estimator.estimate(seconds, max_tokens_of(handle.request.body))
                handle.on_output_estimate(self._endpoint, estimate)
            handle.complete()
            return
        handle.on_disconnect()
