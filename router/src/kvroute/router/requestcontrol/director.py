"""The Director: the one place that owns a request's lifecycle. Front doors (the OpenAI proxy, the Envoy ext_proc
server) translate their protocol into these calls and nothing else (`handle.RequestHandle`):

    handle = director.start(api, body, headers, subset)  # or RequestError: answer it and stop
    # ... or, when `director.preparing` (the configuration has a Preparer):
    handle = await director.start_prepared(api, body, headers, subset)
    handle.on_forward(endpoint)                          # before each attempt (primary, then fallbacks)
    handle.on_unreachable(endpoint, reason)              # an attempt failed before any response byte
    handle.on_response_headers(endpoint, status, headers)
    handle.on_response_chunk(endpoint, data)             # every body chunk, as it passes
    handle.on_output_estimate(endpoint, tokens)          # instead, when the body is not seen (ext_proc light)
    handle.complete(error)                               # always, in a `finally`: only the first call acts

`start` does, in order: drop client-supplied routing headers; parse the body (`body`); take `holder.current`
once (the request keeps that configuration to the end, so its response hooks run on the plugins that scheduled
it); admission (priority from `x-gateway-inference-objective`, shedding of sheddable requests when saturated);
`Scheduler.schedule` on the pool's snapshot with a fresh `CycleState`; every `PreRequest` hook. Errors are
`RequestError`s: 400 bad body, 413 too large, 429 shed, 503 no endpoint, 500 a plugin failed.

`start_prepared` awaits every `Preparer` of the configuration (in order, with the candidates) between admission
and scheduling; a preparer that fails (`PreparationFailed`, or a bug) is counted and logged, and the request is
scheduled anyway. Front doors call it only when `preparing` is true, so a configuration without preparers
schedules exactly as before, without awaiting anything. A request whose client goes away while it is being
prepared is recorded as 499.

`complete` runs every `ResponseHook.on_response_complete` exactly once however the request ends (see `handle`).

With `fleet` (router replicas sharing their state, `kvroute.router.fleet.sync`), the request is recorded for the
peers after its PreRequest hooks, its output tokens as they stream and its completion.

Passive health: an endpoint reported unreachable is left out of the candidates until it is scraped successfully
again or `unreachable_cooldown` seconds pass (then real traffic probes it), unless that would leave none.

Metrics: request totals and durations by API and status (499 for a client that went away), the in-flight gauge
of the endpoint serving the request (the decode endpoint in P/D; it moves with a fallback), and the prefix hit
ratio `cached_tokens / prompt_tokens` from the response's usage. The scheduler records its decisions itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Collection, Iterable
from typing import NamedTuple

from kvroute.router.config.builder import LoadedConfig
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
from kvroute.router.requestcontrol.handle import RequestHandle

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
CLIENT_CLOSED = 499  # status recorded for a request whose client went away (nginx's convention)
EP_PREPARE = "Preparer.prepare"  # `extension_point` label of the preparers' latency

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
        unreachable_cooldown: float = 5.0,
        fleet: FleetSync | None = None,
    ) -> None:
        self.holder = holder
        self.pool = pool
        self.metrics = metrics
        self.fleet = fleet  # peers told of every request scheduled here (router replicas sharing state)
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

    def start(
        self,
        api: ApiKind,
        raw: bytes,
        headers: Iterable[tuple[str, str]],
        subset: Collection[str] | None = None,
    ) -> RequestHandle:
        """Parses, admits, schedules and runs the PreRequest hooks; raises `RequestError` when the request cannot
        be forwarded. `subset` (a gateway's hint) restricts the candidates as in `candidates`. The caller must
        `complete()` the handle it gets, whatever happens next."""
        started = time.perf_counter()
        try:
            return self._schedule(self._admit(api, raw, headers, subset), started)
        except RequestError as exc:
            self.record(api, exc.status, time.perf_counter() - started)
            raise

    @property
    def preparing(self) -> bool:
        """Whether the configuration in force prepares requests: front doors then call `start_prepared`."""
        return bool(self.holder.current.preparers)

    async def start_prepared(
        self,
        api: ApiKind,
        raw: bytes,
        headers: Iterable[tuple[str, str]],
        subset: Collection[str] | None = None,
    ) -> RequestHandle:
        """`start`, with the configuration's preparers awaited between admission and scheduling."""
        started = time.perf_counter()
        try:
            admitted = self._admit(api, raw, headers, subset)
            await self._prepare(admitted)
            return self._schedule(admitted, started)
        except RequestError as exc:
            self.record(api, exc.status, time.perf_counter() - started)
            raise
        except asyncio.CancelledError:
            self.record(api, CLIENT_CLOSED, time.perf_counter() - started)
            raise

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
        request, metrics = admitted.request, self.metrics
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

    def _schedule(self, admitted: _Admitted, started: float) -> RequestHandle:
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
        handle = RequestHandle(self, config, request, state, result, admitted.raw, started)
        for hook in config.pre_request:
            try:
                hook.pre_request(state, request, result)
            except Exception:
                log.exception("PreRequest hook %r failed on request %s", hook.name, request_id)
                handle.release("pre_request hook failed")
                raise RequestError(500, "preparing the request failed", "pre_request_failed") from None
        if self.fleet is not None:
            self.fleet.scheduled(config, state, request, result)
        return handle

    def _admission_for(self, config: LoadedConfig) -> Admission:
        cached = self._admission
        if cached is not None and cached[0] is config:
            return cached[1]
        spec = config.admission
        admission = Admission(config.saturation_detector, spec.objectives, spec.default_priority)
        self._admission = (config, admission)
        return admission

    def candidates(self, subset: Collection[str] | None = None) -> tuple[Endpoint, ...]:
        """The pool's endpoints a request may go to. With `subset` (endpoint ids `ip:port`, or bare IPs meaning
        every port of that address) only those, which may leave none."""
        snapshot = self.pool.snapshot()
        if subset is not None:
            snapshot = tuple(e for e in snapshot if e.id in subset or e.address in subset)
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
