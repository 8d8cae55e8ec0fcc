"""The Director: the one place that owns a request's lifecycle. Front doors (the OpenAI proxy, the Envoy ext_proc
server) translate their protocol into these calls and nothing else:

    intake = director.open(api, content_length)          # RequestError (413): answer it and stop
    intake.add(chunk)                                    # each body chunk, when the door reads them itself
    started = director.start(api, intake.body, headers, subset)   # or RequestError: answer it and stop
    handle = started if isinstance(started, RequestHandle) else await started
    handle.on_forward(endpoint)                          # before each attempt (primary, then fallbacks)
    handle.on_unreachable(endpoint, reason)              # an attempt could not connect (its breaker opens)
    handle.on_attempt_failed(endpoint, reason)           # an attempt failed before any byte reached the client
    handle.on_response_headers(endpoint, status, headers)
    handle.on_response_chunk(endpoint, data)             # every body chunk, as it passes
    handle.on_output_estimate(endpoint, tokens)          # instead, when the body is not seen (ext_proc light)
    handle.complete(error, status=...)                   # the end: success, or how it failed
    handle.on_disconnect()                               # always, in a `finally`: 499 unless it ended already

`start` does, in order: drop client-supplied routing headers; parse the body (`body`); take `holder.current`
once (the request keeps that configuration to the end, so its response hooks run on the plugins that scheduled
it); admission (priority from `x-gateway-inference-objective`, shedding of sheddable requests when saturated);
`Scheduler.schedule` on the pool's snapshot with a fresh `CycleState`; every `PreRequest` hook. Errors are
`RequestError`s: 400 bad body, 413 too large, 429 shed, 503 no endpoint, 500 a plugin failed. The request id is
the client's `x-request-id` when it is usable, else one generated here.

When the configuration has `Preparer`s, `start` returns an awaitable instead of the handle: it admits the
request, awaits every preparer (in order, with the candidates), then schedules. A preparer that fails
(`PreparationFailed`, or a bug) is counted and logged, and the request is scheduled anyway; a request whose
client goes away while it is being prepared is recorded as 499. A configuration without preparers schedules
synchronously, without awaiting anything.

With `flowControl` in the configuration, `start` always returns an awaitable: the request is parsed and admitted
(nothing is shed), then waits in the `FlowController` (its band is its priority, its flow the
`x-gateway-inference-fairness-id` header, else its objective, else "default-flow") until the saturation detector
leaves room; then it is prepared and scheduled on the candidates of that moment. A full queue answers 429 (with
`Retry-After`), a request that waited `defaultRequestTTL` answers 503, and a client that goes away while queued
leaves the queue (recorded as 499). Every request's end wakes the queue. docs/flow-control.md has the semantics.

The handle reports to the `Ledger` (request metrics, in-flight gauges, fleet peers, the endpoints' circuit
breakers, `breaker`); `candidates` leaves out the endpoints whose breaker is open. With `fleet` (router replicas
sharing their state, `kvroute.router.fleet.sync`), the request is recorded for the peers after its PreRequest
hooks, its output tokens as they stream and its completion.

Metrics: request totals and durations by API and status (499 for a client that went away), the in-flight gauge
of the endpoint serving the request (the decode endpoint in P/D; it moves with a fallback), and the prefix hit
ratio `cached_tokens / prompt_tokens` from the response's usage, and the age of the metrics each target was picked
on (`Ledger.scheduled`, which also hints the metrics scraper). The scheduler records its decisions itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import NamedTuple

from kvroute.router.config.builder import LoadedConfig
from kvroute.router.config.models import FlowControlSpec
from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.fleet.sync import FleetSync
from kvroute.router.framework import (
    ApiKind,
    CycleState,
    Endpoint,
    LLMRequest,
    NoEndpointsError,
    PreparationFailed,
)
from kvroute.router.framework.objectives import ObjectivePriorities
from kvroute.router.observability import RouterMetrics
from kvroute.router.requestcontrol.admission import Admission, AdmissionRejected, admission_for
from kvroute.router.requestcontrol.body import (
    REQUEST_ID_HEADER,
    RequestError,
    clean_headers,
    parse_body,
    valid_request_id,
)
from kvroute.router.requestcontrol.breaker import BreakerSettings
from kvroute.router.requestcontrol.flowcontrol.controller import RETRY_AFTER_SECONDS, FlowController, FlowRejected
from kvroute.router.requestcontrol.flowcontrol.limits import band_limits
from kvroute.router.requestcontrol.flowcontrol.metrics import FlowControlMetrics
from kvroute.router.requestcontrol.handle import CLIENT_CLOSED, RequestHandle
from kvroute.router.requestcontrol.intake import Intake
from kvroute.router.requestcontrol.ledger import Ledger

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
FAIRNESS_ID_HEADER = "x-gateway-inference-fairness-id"
DEFAULT_FLOW = "default-flow"  # GIE's flow of requests naming no fairness id
EP_PREPARE = "Preparer.prepare"  # `extension_point` label of the preparers' latency

Started = RequestHandle | Awaitable[RequestHandle]
"""What `Director.start` returns: the handle, or (when the configuration prepares requests) an awaitable of it."""

_ids = itertools.count(1)
_id_prefix = os.urandom(4).hex()


def _new_request_id() -> str:
    return f"kvr-{_id_prefix}-{next(_ids)}"


class _Admitted(NamedTuple):
    """A parsed and admitted request, not yet scheduled; it keeps the configuration it was admitted under."""

    config: LoadedConfig
    request: LLMRequest
    candidates: tuple[Endpoint, ...]
    raw: bytes


class Director:
    def __init__(
        self,
        holder: ConfigHolder,
        pool: EndpointPool,
        metrics: RouterMetrics | None = None,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        breaker: BreakerSettings | None = None,
        fleet: FleetSync | None = None,
        objectives: ObjectivePriorities | None = None,
        routed: Callable[[str], None] | None = None,
    ) -> None:
        """`routed` is told the id of each request's target endpoint once it is scheduled (the metrics scraper's
        `scrape_soon`)."""
        self.holder = holder
        self.pool = pool
        self.ledger = Ledger(metrics, fleet, breaker=breaker, routed=routed)
        self.max_body_bytes = max_body_bytes
        self._admission: tuple[LoadedConfig, Admission] | None = None
        self.objectives = objectives  # the cluster's objective priorities, over the configured ones
        self._flow: FlowController | None = None

    def open(self, api: ApiKind, length: int | None = None) -> Intake:
        """The intake of a request's body; raises the 413 `RequestError` (recorded) when `length`, the size the
        client announced (`Content-Length`), is over the limit, before the body is read."""
        return Intake(api, self.max_body_bytes, self.ledger, length)

    def start(
        self,
        api: ApiKind,
        raw: bytes,
        headers: Iterable[tuple[str, str]],
        subset: Collection[str] | None = None,
    ) -> Started:
        """Parses, admits, schedules and runs the PreRequest hooks; raises `RequestError` when the request cannot
        be forwarded. `subset` (a gateway's hint) restricts the candidates as in `candidates`. Returns the handle,
        or, when the configuration prepares requests, an awaitable of it (which may raise `RequestError` too).
        The caller must end the handle it gets (`complete`, `on_disconnect`), whatever happens next."""
        if self.holder.current.document.flow_control is not None:
            return self._start_queued(api, raw, headers, subset)
        if self.holder.current.preparers:
            return self._start_prepared(api, raw, headers, subset)
        started = time.perf_counter()
        try:
            return self._schedule(self._admit(api, raw, headers, subset), started)
        except RequestError as exc:
            self.ledger.record(api, exc.status, time.perf_counter() - started)
            raise

    async def _start_prepared(
        self, api: ApiKind, raw: bytes, headers: Iterable[tuple[str, str]], subset: Collection[str] | None
    ) -> RequestHandle:
        started = time.perf_counter()
        try:
            admitted = self._admit(api, raw, headers, subset)
            await self._prepare(admitted)
            return self._schedule(admitted, started)
        except RequestError as exc:
            self.ledger.record(api, exc.status, time.perf_counter() - started)
            raise
        except asyncio.CancelledError:
            self.ledger.record(api, CLIENT_CLOSED, time.perf_counter() - started)
            raise

    async def _start_queued(
        self, api: ApiKind, raw: bytes, headers: Iterable[tuple[str, str]], subset: Collection[str] | None
    ) -> RequestHandle:
        started = time.perf_counter()
        try:
            admitted = self._admit(api, raw, headers, subset)
            flow_control = admitted.config.document.flow_control
            assert (
                flow_control is not None
            )  # `start` checked: the request keeps the configuration it was admitted under
            flow = self._flow_for(flow_control)
            request = admitted.request
            try:
                await flow.wait(request.priority, _flow_id(request), len(raw))
            except FlowRejected as exc:
                headers_out = {"retry-after": str(RETRY_AFTER_SECONDS)} if exc.status == 429 else {}
                raise RequestError(exc.status, exc.message, exc.reason, headers=headers_out) from None
            try:
                admitted = admitted._replace(candidates=self.candidates(subset))
                if not admitted.candidates:
                    raise RequestError(503, "no endpoint can serve the request", "no_endpoints")
                await self._prepare(admitted)
                return self._schedule(admitted, started, on_release=flow.wake)
            finally:
                flow.settled()
        except RequestError as exc:
            self.ledger.record(api, exc.status, time.perf_counter() - started)
            raise
        except asyncio.CancelledError:
            self.ledger.record(api, CLIENT_CLOSED, time.perf_counter() - started)
            raise

    def _flow_for(self, spec: FlowControlSpec) -> FlowController:
        flow = self._flow
        if flow is None:
            metrics = self.ledger.metrics
            flow = self._flow = FlowController(
                spec,
                lambda: self.holder.current.saturation_detector,
                self.candidates,
                FlowControlMetrics(metrics.registry) if metrics is not None else None,
                limits=lambda: band_limits(self.holder.current),
            )
            self.pool.subscribe(lambda _change: flow.wake())
        else:
            flow.configure(spec)
        return flow

    def not_ready_reason(self) -> str | None:
        """None when the router can serve (at least one endpoint has fresh metrics); otherwise why not."""
        endpoints = self.pool.snapshot()
        if not endpoints:
            return "no endpoints"
        if all(e.metrics.stale for e in endpoints):
            return "no endpoint has fresh metrics"
        return None

    def _admit(
        self, api: ApiKind, raw: bytes, headers: Iterable[tuple[str, str]], subset: Collection[str] | None
    ) -> _Admitted:
        cleaned = clean_headers(headers)
        parsed = parse_body(raw, api, self.max_body_bytes)
        config = self.holder.current
        admission = self._admission_for(config)
        request_id = cleaned.get(REQUEST_ID_HEADER)
        if request_id is None or not valid_request_id(request_id):
            request_id = _new_request_id()
        objective = admission.objective_for(cleaned, lower_case=True)
        request = LLMRequest(
            request_id=request_id,
            model=parsed.model,
            api=api,
            prompt=parsed.prompt,
            body=parsed.body,
            headers=cleaned,
            priority=admission.priority_of(objective),
            stream=parsed.stream,
            cache_hit_threshold=parsed.cache_hit_threshold,
            objective=objective,
        )
        candidates = self.candidates(subset)
        try:
            admission.admit(request, candidates)
        except AdmissionRejected as exc:
            raise RequestError(exc.status, exc.message, "shed") from None
        except NoEndpointsError as exc:
            raise RequestError(503, f"no endpoint can serve the request: {exc}", "no_endpoints") from None
        except Exception:
            log.exception("admitting request %s failed", request_id)
            raise RequestError(500, "scheduling the request failed", "scheduling_failed") from None
        return _Admitted(config, request, candidates, raw)

    async def _prepare(self, admitted: _Admitted) -> None:
        request, metrics = admitted.request, self.ledger.metrics
        for preparer in admitted.config.preparers:
            t = time.perf_counter()
            try:
                await preparer.prepare(request, admitted.candidates)
            except Exception as exc:
                if isinstance(exc, PreparationFailed):
                    log.debug("preparer %r could not prepare request %s: %s", preparer.name, request.request_id, exc)
                else:
                    log.exception("preparer %r failed on request %s", preparer.name, request.request_id)
                if metrics is not None:
                    metrics.record_preparation_failure(preparer.type_name, preparer.name)
            if metrics is not None:
                metrics.plugin_observer(EP_PREPARE, preparer.type_name, preparer.name)(time.perf_counter() - t)

    def _schedule(
        self, admitted: _Admitted, started: float, on_release: Callable[[], None] | None = None
    ) -> RequestHandle:
        config, request, candidates = admitted.config, admitted.request, admitted.candidates
        request_id = request.request_id
        state = CycleState()
        try:
            result = config.scheduler.schedule(request, candidates, state)
        except NoEndpointsError as exc:
            raise RequestError(503, f"no endpoint can serve the request: {exc}", "no_endpoints") from None
        except Exception:
            log.exception("scheduling request %s failed", request_id)
            raise RequestError(500, "scheduling the request failed", "scheduling_failed") from None
        if not result.endpoints:
            raise RequestError(503, "no endpoint can serve the request", "no_endpoints")
        handle = RequestHandle(self.ledger, config, request, state, result, admitted.raw, started, on_release)
        for hook in config.pre_request:
            try:
                hook.pre_request(state, request, result)
            except Exception:
                log.exception("PreRequest hook %r failed on request %s", hook.name, request_id)
                handle.release("pre_request hook failed")
                raise RequestError(500, "preparing the request failed", "pre_request_failed") from None
        self.ledger.scheduled(result.endpoints[0])
        fleet = self.ledger.fleet
        if fleet is not None:
            fleet.scheduled(config, state, request, result)
        return handle

    def _admission_for(self, config: LoadedConfig) -> Admission:
        cached = self._admission
        if cached is not None and cached[0] is config:
            return cached[1]
        admission = admission_for(config, self.objectives)
        self._admission = (config, admission)
        return admission

    def candidates(self, subset: Collection[str] | None = None) -> tuple[Endpoint, ...]:
        """The pool's endpoints a request may go to, without those whose circuit breaker is open (unless that
        would leave none). With `subset` (endpoint ids `ip:port`, or bare IPs meaning every port of that address)
        only those, which may leave none."""
        snapshot = self.pool.snapshot()
        if subset is not None:
            snapshot = tuple(e for e in snapshot if e.id in subset or e.address in subset)
        return self.ledger.reachable(self.pool, snapshot)


def _flow_id(request: LLMRequest) -> str:
    """The request's flow in its band: its fairness id, else its objective, else GIE's default flow."""
    fairness_id = request.headers.get(FAIRNESS_ID_HEADER, "").strip()
    return fairness_id or request.objective or DEFAULT_FLOW
