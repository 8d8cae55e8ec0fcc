"""`RequestHandle`: one admitted and scheduled request, from its PreRequest hooks to its completion.

`Director.start` creates it; the front door reports each response event of the request's life to it (see
`director`). `complete` runs every `ResponseHook.on_response_complete` exactly once however the request ends
(success, upstream error, client disconnect, cancellation); later calls do nothing. `on_disconnect` is that end
when the client went away, recorded as `CLIENT_CLOSED` (499). A hook that raises is logged and the others still
run, so one faulty plugin cannot leak another's per-request state. The handle reports to the router's `Ledger`:
it moves the in-flight gauge to the endpoint serving the request, reports every attempt's outcome to the
endpoints' circuit breakers (unreachable, failed, answered), tells the fleet peers of the output as it streams,
and records the request on completion.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from prometheus_client import Gauge

from kvroute.router.config.builder import LoadedConfig
from kvroute.router.framework import CycleState, Endpoint, LLMRequest, ResponseInfo, SchedulingResult
from kvroute.router.requestcontrol.body import REQUEST_ID_HEADER
from kvroute.router.requestcontrol.ledger import Ledger
from kvroute.router.requestcontrol.response import ResponseReader

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # status recorded for a request whose client went away (nginx's convention)


class RequestHandle:
    """One admitted and scheduled request, from its PreRequest hooks to its completion."""

    __slots__ = (
        "_answered",
        "_done",
        "_failure",
        "_gauge",
        "_gauge_endpoint",
        "_ledger",
        "_on_release",
        "_reader",
        "_started",
        "config",
        "endpoint",
        "raw_body",
        "request",
        "response",
        "result",
        "state",
    )

    def __init__(
        self,
        ledger: Ledger,
        config: LoadedConfig,
        request: LLMRequest,
        state: CycleState,
        result: SchedulingResult,
        raw_body: bytes,
        started: float,
        on_release: Callable[[], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._on_release = on_release  # told once the request has ended (flow control: room may have freed)
        self.config = config
        self.request = request
        self.state = state
        self.result = result
        self.raw_body = raw_body
        self.response = ResponseInfo()
        self.endpoint: Endpoint = result.endpoints[0]
        self._started = started
        self._done = False
        self._answered: Endpoint | None = None
        self._failure: str | None = None  # why the last attempt failed, until the next one (a retry) starts
        self._reader: ResponseReader | None = None
        self._gauge_endpoint: Endpoint | None = None
        self._gauge: Gauge | None = None
        self._move_gauge(self.endpoint)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The primary target first, then the fallbacks to try if it cannot be reached."""
        return self.result.endpoints

    @property
    def started(self) -> float:
        """When the request arrived (`time.perf_counter()`)."""
        return self._started

    @property
    def done(self) -> bool:
        return self._done

    def upstream_headers(self) -> dict[str, str]:
        """The client's headers (lower-cased, routing headers removed) plus `x-request-id` and the headers the
        scheduling result adds."""
        headers = dict(self.request.headers)
        headers[REQUEST_ID_HEADER] = self.request.request_id
        headers.update(self.result.headers)
        return headers

    def on_forward(self, endpoint: Endpoint) -> None:
        """The front door is about to send the request to `endpoint` (after a failed attempt: a retry)."""
        self.endpoint = endpoint
        self._move_gauge(endpoint)
        ledger = self._ledger
        ledger.forwarded(endpoint)
        if self._failure is not None:
            ledger.record_retry(self._failure)
            self._failure = None

    def on_unreachable(self, endpoint: Endpoint, reason: str) -> None:
        """Connecting to `endpoint` failed before any response byte; the front door tries the next fallback."""
        log.warning("endpoint %s unreachable for request %s: %s", endpoint.id, self.request.request_id, reason)
        self._ledger.mark_unreachable(endpoint)
        self._failure = "unreachable"

    def on_attempt_failed(self, endpoint: Endpoint, reason: str) -> None:
        """`endpoint` took the request but its attempt failed before any byte reached the client (a retryable
        status, no first byte in time; `reason` is a short label): one failure for its circuit breaker. The front
        door sends the request to the next fallback or answers the failure itself."""
        log.info("attempt of request %s on %s failed: %s", self.request.request_id, endpoint.id, reason)
        self._ledger.attempt_failed(endpoint, reason)
        self._failure = reason

    def on_response_headers(self, endpoint: Endpoint, status: int, headers: Mapping[str, str]) -> None:
        self.endpoint = endpoint
        self._answered = endpoint
        self._move_gauge(endpoint)
        self._ledger.answered(endpoint, status)
        response = self.response
        response.status = status
        response.headers = headers
        self._reader = ResponseReader(response, headers)
        for hook in self.config.response_hooks:
            try:
                hook.on_response_headers(self.state, self.request, endpoint, response)
            except Exception:
                log.exception("response hook %r failed on headers of request %s", hook.name, self.request.request_id)

    def on_response_chunk(self, endpoint: Endpoint, data: bytes) -> None:
        reader = self._reader
        new_tokens = reader.feed(data) if reader is not None else 0
        self._chunk_hooks(endpoint, new_tokens)

    def on_output_estimate(self, endpoint: Endpoint, output_tokens: int) -> None:
        """The response body was not seen (ext_proc's light mode): `output_tokens` is an estimate of the total,
        recorded like a chunk carrying the difference."""
        response = self.response
        added = output_tokens - response.output_tokens
        if added > 0:
            response.output_tokens = output_tokens
            self._chunk_hooks(endpoint, added)

    def _chunk_hooks(self, endpoint: Endpoint, new_tokens: int) -> None:
        for hook in self.config.response_hooks:
            try:
                hook.on_response_chunk(self.state, self.request, endpoint, self.response, new_tokens)
            except Exception:
                log.exception("response hook %r failed on a chunk of request %s", hook.name, self.request.request_id)
        fleet = self._ledger.fleet
        if fleet is not None and new_tokens > 0:
            fleet.progress(self.request.request_id, self.response.output_tokens)

    def complete(self, error: str | None = None, *, status: int | None = None) -> None:
        """Ends the request: every response hook's `on_response_complete` runs once; later calls do nothing.
        `status` is the one recorded in the metrics when it differs from the upstream's (e.g. 499, 502)."""
        if self._done:
            return
        self.release(error)
        response = self.response
        ledger = self._ledger
        if ledger.metrics is not None:
            code = status or response.status or (502 if error else 200)
            ledger.record(self.request.api, code, time.perf_counter() - self._started)
            ledger.observe_prefix_hit(response.prompt_tokens, response.cached_tokens)

    def on_disconnect(self) -> None:
        """The client went away (or the door was cancelled) before the request ended otherwise: `complete` with
        the error "client disconnected", recorded as 499. Does nothing once the request is complete."""
        self.complete("client disconnected", status=CLIENT_CLOSED)

    def release(self, error: str | None) -> None:
        """`complete` without recording the request in the metrics (the Director records a refused one)."""
        if self._done:
            return
        self._done = True
        response = self.response
        response.error = error
        reader = self._reader
        if reader is not None and error is None and self._answered is not None:
            new_tokens = reader.finish()
            if new_tokens:
                self._chunk_hooks(self._answered, new_tokens)
        for hook in self.config.response_hooks:
            try:
                hook.on_response_complete(self.state, self.request, self._answered, response)
            except Exception:
                log.exception("response hook %r failed to complete request %s", hook.name, self.request.request_id)
        fleet = self._ledger.fleet
        if fleet is not None:
            fleet.completed(self.request.request_id)
        self._move_gauge(None)
        if self._on_release is not None:
            self._on_release()

    def _move_gauge(self, endpoint: Endpoint | None) -> None:
        if _same(self._gauge_endpoint, endpoint):
            return
        # The series decremented is the one incremented, even when its endpoint has left the pool since and the
        # series was dropped (perhaps recreated for a new endpoint under the same id, which must not go below 0).
        if self._gauge is not None:
            self._gauge.dec()
        self._gauge = self._ledger.in_flight_gauge(endpoint) if endpoint is not None else None
        if self._gauge is not None:
            self._gauge.inc()
        self._gauge_endpoint = endpoint


def _same(a: Endpoint | None, b: Endpoint | None) -> bool:
    return a is b or (a is not None and b is not None and a.id == b.id)
