"""The overload scenario in the discrete-event harness, with the router's own admission and flow-control queue.

`GatedPolicy` wraps the quality benchmark's `SchedulerPolicy` (kvroute's real scheduler and hooks) with what the
Director does before scheduling, from the same configuration document:

- admission (`requestcontrol.admission.admission_for`): the priority of the request's objective header, and,
  without `flowControl`, GIE's shedding: a sheddable request (priority < 0) is refused with 429 while the
  configuration's saturation detector reports the pool saturated;
- with `flowControl`: the router's `FlowQueue` (bands, fairness between flows, the limits; 429 over a limit), held
  in the harness (`HOLD`) and released one at a time while the detector reports a saturation below the band's
  ceiling (`flowcontrol.limits`: the usage-limit policy), each scheduled before the next is considered, as
  `FlowController` does. A dispatch pass runs right after a request is queued or completes (at the same
  instant, as the controller's `wake`) and at every metrics scrape (50 ms; the live router also re-checks every
  20 ms); a request queued `defaultRequestTTL` is refused with 503 at the first scrape after its deadline.

The harness's clock is the plugins' clock, so the detectors see the virtual time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvroute.bench.overload.metrics import Outcome
from kvroute.bench.overload.scenario import TenantRequest
from kvroute.bench.quality.adapter import SchedulerPolicy
from kvroute.bench.quality.workloads import Fleet
from kvroute.router.framework import LLMRequest
from kvroute.router.requestcontrol.admission import AdmissionRejected, admission_for
from kvroute.router.requestcontrol.flowcontrol.limits import BandGate, band_limits
from kvroute.router.requestcontrol.flowcontrol.queue import CapacityExceeded, FlowQueue, QueueItem
from kvroute.simulator.des.harness import (
    HOLD,
    Answer,
    EngineView,
    HarnessControl,
    HarnessListener,
    Refuse,
    RequestRecord,
    WorkloadRequest,
    simulate,
)

DEFAULT_FLOW = "default-flow"


@dataclass(slots=True)
class _Waiting:
    request: LLMRequest
    queued_at: float


class GatedPolicy(HarnessListener):
    def __init__(self, config_text: str, fleet: Fleet, seed: int, requests: Sequence[TenantRequest]) -> None:
        self.inner = SchedulerPolicy(config_text, fleet, seed)
        self.tick_interval = self.inner.tick_interval
        config = self.inner.config
        self.admission = admission_for(config)
        self.detector = config.saturation_detector
        spec = config.document.flow_control
        self.queue: FlowQueue[_Waiting] | None = FlowQueue(spec) if spec is not None else None
        self.ttl = spec.default_request_ttl if spec is not None else 0.0
        self.limits = band_limits(config)
        self._headers = {r.request.request_id: r.headers for r in requests}
        self._control: HarnessControl | None = None
        self._woken = False  # a dispatch pass is due at this instant

    def on_start(self, control: HarnessControl) -> None:
        self._control = control

    def route(self, request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> Answer:
        self.inner.now = now
        headers = self._headers[request.request_id]
        admission = self.admission
        llm_request = self.inner.llm_request(request, headers)
        llm_request.priority = admission.priority_for(headers)
        llm_request.objective = admission.objective_for(headers)
        queue = self.queue
        if queue is None:
            try:
                admission.admit(llm_request, self.inner.endpoints)
            except AdmissionRejected as exc:
                return Refuse(exc.status)
            return self.inner.schedule(llm_request)
        if not queue and self._gate(llm_request.priority).admits(llm_request.priority):
            return self.inner.schedule(llm_request)
        flow = headers.get("x-gateway-inference-fairness-id") or llm_request.objective or DEFAULT_FLOW
        try:
            queue.push(llm_request.priority, flow, len(request.prompt), _Waiting(llm_request, now))
        except CapacityExceeded:
            return Refuse(429)
        self._wake()
        return HOLD

    def on_tick(self, engines: Sequence[EngineView], now: float) -> None:
        self.inner.on_tick(engines, now)
        queue = self.queue
        if queue:
            assert queue is not None and self._control is not None
            expired: list[QueueItem[_Waiting]] = []
            queue.each(lambda item: expired.append(item) if now - item.payload.queued_at >= self.ttl else None)
            for item in expired:
                queue.remove(item)
                self._control.reject(item.payload.request.request_id, 503)
            self._release()

    def on_tokens(self, record: RequestRecord, new_tokens: int, now: float) -> None:
        self.inner.on_tokens(record, new_tokens, now)

    def on_finish(self, record: RequestRecord, now: float) -> None:
        self.inner.on_finish(record, now)
        if self.queue:
            self._wake()

    def _wake(self) -> None:
        if not self._woken:
            assert self._control is not None
            self._woken = True
            self._control.call_soon(self._release)

    def _release(self) -> None:
        self._woken = False
        queue, control = self.queue, self._control
        while queue:
            assert queue is not None and control is not None
            item = queue.pop(self._gate().admits)
            if item is None:
                break
            request = item.payload.request
            control.dispatch(request.request_id, self.inner.schedule(request))

    def _gate(self, arriving: int | None = None) -> BandGate:
        assert self.queue is not None
        saturation = self.detector.saturation(self.inner.endpoints)
        return self.limits.gate(saturation, self.queue.priorities, arriving)


def run(config_text: str, fleet: Fleet, requests: Sequence[TenantRequest], seed: int) -> list[Outcome]:
    """Each request's outcome, in `requests` order."""
    policy = GatedPolicy(config_text, fleet, seed, requests)
    result = simulate(
        fleet.profiles,
        [r.request for r in requests],
        policy.route,
        listener=policy,
        tick_interval=policy.tick_interval,
    )
    records = {r.request_id: r for r in result.records}
    return [_outcome(r, records[r.request.request_id]) for r in requests]


def _outcome(request: TenantRequest, record: RequestRecord) -> Outcome:
    completed = record.status is None and record.finish_time is not None
    wait = None if record.dispatch_time is None else record.dispatch_time - record.arrival_time
    return Outcome(request.tenant, request.objective, completed, record.status, record.ttft, wait, record.finish_time)
