"""The Director: the one place that owns a request's lifecycle. Front doors (the OpenAI proxy, the Envoy ext_proc
server) translate their protocol into these calls and nothing else:

    handle = director.start(api, body, headers)          # or RequestError: answer it and stop
    handle.on_forward(endpoint)                          # before each attempt (primary, then fallbacks)
    handle.on_unreachable(endpoint, reason)              # an attempt failed before any response byte
    handle.on_response_headers(endpoint, status, headers)
    handle.on_response_chunk(endpoint, data)             # every body chunk, as it passes
    handle.complete(error)                               # always, in a `finally`: only the first call acts

`start` does, in order: drop client-supplied routing headers; parse the body (`body`); take `holder.current`
once (the request keeps that configuration to the end, so its response hooks run on the plugins that scheduled
it); admission (priority from `x-gateway-inference-objective`, shedding of sheddable requests when saturated);
`Scheduler.schedule` on the pool's snapshot with a fresh `CycleState`; every `PreRequest` hook. Errors are
`RequestError`s: 400 bad body, 413 too large, 429 shed, 503 no endpoint, 500 a plugin failed.

`complete` runs every `ResponseHook.on_response_complete` exactly once however the request ends (success,
upstream error, client disconnect, cancellation); later calls do nothing. A hook that raises is logged and the
others still run, so one faulty plugin cannot leak another's per-request state.

Passive health: an endpoint reported unreachable is left out of the candidates until it is scraped successfully
again or `unreachable_cooldown` seconds pass (then real traffic probes it), unless that would leave none.

Metrics: request totals and durations by API and status (499 for a client that went away), the in-flight gauge
of the endpoint serving the request (the decode endpoint in P/D; it moves with a fallback), and the prefix hit
ratio `cached_tokens / prompt_tokens` from the response's usage. The scheduler records its decisions itself.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable, Mapping

from kvroute.router.config.builder import LoadedConfig
from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.framework import (
    ApiKind,
    CycleState,
    Endpoint,
    LLMRequest,
    NoEndpointsError,
    ResponseInfo,
    SchedulingResult,
)
from kvroute.router.observability import RouterMetrics
from kvroute.router.requestcontrol.admission import Admission, AdmissionRejected
from kvroute.router.requestcontrol.body import (
    REQUEST_ID_HEADER,
    RequestError,
    clean_headers,
    parse_body,
    too_large,
    valid_request_id,
)
from kvroute.router.requestcontrol.response import ResponseReader

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
CLIENT_CLOSED = 499  # status recorded for a request whose client went away (nginx's convention)

_ids = itertools.count(1)
_id_prefix = os.urandom(4).hex()


def _new_request_id() -> str:
    return f"kvr-{_id_prefix}-{next(_ids)}"


class Director:
    def __init__(
        self,
        holder: ConfigHolder,
        pool: EndpointPool,
        metrics: RouterMetrics | None = None,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        unreachable_cooldown: float = 5.0,
    ) -> None:
        self.holder = holder
        self.pool = pool
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self._cooldown = unreachable_cooldown
        self._unreachable: dict[str, float] = {}  # endpoint id -> when it failed (time.monotonic)
        self._admission: tuple[LoadedConfig, Admission] | None = None

    def check_length(self, api: ApiKind, length: int | None) -> None:
        """Refuses a body announced (`Content-Length`) as larger than the limit, before it is read."""
        if length is not None and length > self.max_body_bytes:
            raise self.refuse(api, too_large(self.max_body_bytes))

    def refuse(self, api: ApiKind, error: RequestError) -> RequestError:
        """Records a request the front door refuses itself; returns `error` for it to raise."""
        self.record(api, error.status, 0.0)
        return error

    def start(self, api: ApiKind, raw: bytes, headers: Iterable[tuple[str, str]]) -> RequestHandle:
        """Parses, admits, schedules and runs the PreRequest hooks; raises `RequestError` when the request cannot
        be forwarded. The caller must `complete()` the handle it gets, whatever happens next."""
        started = time.perf_counter()
        try:
            return self._start(api, raw, headers, started)
        except RequestError as exc:
            self.record(api, exc.status, time.perf_counter() - started)
            raise

    def _start(self, api: ApiKind, raw: bytes, headers: Iterable[tuple[str, str]], started: float) -> RequestHandle:
        cleaned = clean_headers(headers)
        parsed = parse_body(raw, api, self.max_body_bytes)
        config = self.holder.current
        admission = self._admission_for(config)
        request_id = cleaned.get(REQUEST_ID_HEADER)
        if request_id is None or not valid_request_id(request_id):
            request_id = _new_request_id()
        request = LLMRequest(
            request_id=request_id,
            model=parsed.model,
            api=api,
            prompt=parsed.prompt,
            body=parsed.body,
            headers=cleaned,
            priority=admission.priority_for(cleaned),
            stream=parsed.stream,
            cache_hit_threshold=parsed.cache_hit_threshold,
            objective=admission.objective_for(cleaned),
        )
        candidates = self._candidates()
        state = CycleState()
        try:
            admission.admit(request, candidates)
            result = config.scheduler.schedule(request, candidates, state)
        except AdmissionRejected as exc:
            raise RequestError(exc.status, exc.message, "shed") from None
        except NoEndpointsError as exc:
            raise RequestError(503, f"no endpoint can serve the request: {exc}", "no_endpoints") from None
        except Exception:
            log.exception("scheduling request %s failed", request_id)
            raise RequestError(500, "scheduling the request failed", "scheduling_failed") from None
        if not result.endpoints:
            raise RequestError(503, "no endpoint can serve the request", "no_endpoints")
        handle = RequestHandle(self, config, request, state, result, raw, started)
        for hook in config.pre_request:
            try:
                hook.pre_request(state, request, result)
            except Exception:
                log.exception("PreRequest hook %r failed on request %s", hook.name, request_id)
                handle.release("pre_request hook failed")
                raise RequestError(500, "preparing the request failed", "pre_request_failed") from None
        return handle

    def _admission_for(self, config: LoadedConfig) -> Admission:
        cached = self._admission
        if cached is not None and cached[0] is config:
            return cached[1]
        spec = config.admission
        admission = Admission(config.saturation_detector, spec.objectives, spec.default_priority)
        self._admission = (config, admission)
        return admission

    def _candidates(self) -> tuple[Endpoint, ...]:
        snapshot = self.pool.snapshot()
        if not self._unreachable:
            return snapshot
        now = time.monotonic()
        for endpoint_id, failed_at in list(self._unreachable.items()):
            endpoint = self.pool.get(endpoint_id)
            if endpoint is None or now - failed_at >= self._cooldown or endpoint.metrics.scraped_at > failed_at:
                del self._unreachable[endpoint_id]
        reachable = tuple(e for e in snapshot if e.id not in self._unreachable)
        return reachable or snapshot

    def mark_unreachable(self, endpoint: Endpoint) -> None:
        self._unreachable[endpoint.id] = time.monotonic()

    def record(self, api: ApiKind, status: int, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.record_request(api.value, status, seconds)


class RequestHandle:
    """One admitted and scheduled request, from its PreRequest hooks to its completion."""

    __slots__ = (
        "_answered",
        "_director",
        "_done",
        "_gauge_endpoint",
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
        director: Director,
        config: LoadedConfig,
        request: LLMRequest,
        state: CycleState,
        result: SchedulingResult,
        raw_body: bytes,
        started: float,
    ) -> None:
        self._director = director
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
        self._reader: ResponseReader | None = None
        self._gauge_endpoint: Endpoint | None = None
        self._move_gauge(self.endpoint)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The primary target first, then the fallbacks to try if it cannot be reached."""
        return self.result.endpoints

    @property
    def done(self) -> bool:
        return self._done

    def upstream_headers(self) -> dict[str, str]:
        """The client's headers (lower-cased, routing headers removed) plus `x-request-id` and the headers the
        scheduling result adds (e.g. `x-prefiller-host-port`)."""
        headers = dict(self.request.headers)
        headers[REQUEST_ID_HEADER] = self.request.request_id
        headers.update(self.result.headers)
        return headers

    def on_forward(self, endpoint: Endpoint) -> None:
        """The front door is about to send the request to `endpoint`."""
        self.endpoint = endpoint
        self._move_gauge(endpoint)

    def on_unreachable(self, endpoint: Endpoint, reason: str) -> None:
        """Connecting to `endpoint` failed before any response byte; the front door tries the next fallback."""
        log.warning("endpoint %s unreachable for request %s: %s", endpoint.id, self.request.request_id, reason)
        self._director.mark_unreachable(endpoint)

    def on_response_headers(self, endpoint: Endpoint, status: int, headers: Mapping[str, str]) -> None:
        self.endpoint = endpoint
        self._answered = endpoint
        self._move_gauge(endpoint)
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

    def _chunk_hooks(self, endpoint: Endpoint, new_tokens: int) -> None:
        for hook in self.config.response_hooks:
            try:
                hook.on_response_chunk(self.state, self.request, endpoint, self.response, new_tokens)
            except Exception:
                log.exception("response hook %r failed on a chunk of request %s", hook.name, self.request.request_id)

    def complete(self, error: str | None = None, *, status: int | None = None) -> None:
        """Ends the request: every response hook's `on_response_complete` runs once; later calls do nothing.
        `status` is the one recorded in the metrics when it differs from the upstream's (e.g. 499, 502)."""
        if self._done:
            return
        self.release(error)
        response = self.response
        director = self._director
        if director.metrics is not None:
            code = status or response.status or (502 if error else 200)
            director.record(self.request.api, code, time.perf_counter() - self._started)
            if response.prompt_tokens and response.cached_tokens is not None:
                director.metrics.observe_prefix_hit_ratio(min(1.0, response.cached_tokens / response.prompt_tokens))

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
        self._move_gauge(None)

    def _move_gauge(self, endpoint: Endpoint | None) -> None:
        metrics = self._director.metrics
        previous = self._gauge_endpoint
        if metrics is None or _same(previous, endpoint):
            return
        if previous is not None:
            metrics.in_flight_gauge(previous.id).dec()
        if endpoint is not None:
            metrics.in_flight_gauge(endpoint.id).inc()
        self._gauge_endpoint = endpoint


def _same(a: Endpoint | None, b: Endpoint | None) -> bool:
    return a is b or (a is not None and b is not None and a.id == b.id)
