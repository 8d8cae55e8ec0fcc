"""Discrete-event simulation of a fleet of engines behind a routing policy.

The same `Engine` code as the real-time server runs under a virtual clock: a heap of timed events (request
arrivals, ends of engine steps) is processed in time order, ties broken by insertion order, so a run is a pure
function of its inputs (profiles, workload, policy and the policy's seed). At each arrival the policy is asked
for an engine index, given read-only views of every engine's true state; the request joins that engine's waiting
queue and an idle engine starts a step at once. When a step ends its outputs are delivered (first token, tokens,
finish) to the records and to an optional listener, and the engine steps again while it has work.

Prefill/decode disaggregation: a policy may answer a `Route` naming a prefill engine as well as the decode
engine. The request then runs in two stages, as behind vLLM's P/D connector: on the prefill engine with
`kv_transfer_params.do_remote_decode` (it stops after one token, which the client never sees), then, the moment
that stage finishes, on the decode engine with the `kv_transfer_params` it returned (`do_remote_prefill`: the
decode engine receives the KV of the prompt tokens it lacks over the network instead of computing them). TTFT and
the listener's token callbacks belong to the decode stage only.

With `record_kv_events`, the engines record their KV-cache events (as a vLLM engine publishes them) and the
listener's `on_kv_events` receives each step's events at the step's start, when the engine scheduled (and so
cached) the blocks.

With `tick_interval`, the listener's `on_tick` runs at time 0 and every `tick_interval` seconds while anything
else is scheduled or held, before any other event of the same instant: a router's periodic metrics scrape.

A router that queues (flow control) answers `HOLD` instead of an engine: the request waits in the router. The
listener got a `HarnessControl` in `on_start`; with it, it later `dispatch`es the request (it reaches the engine at
that instant, after the event being processed) or `reject`s it with an HTTP status (the record's `status`; no
tokens); a policy may also refuse a request at once (`Refuse`). TTFT still counts from the arrival;
`dispatch_time` tells how long the request waited in the router. Requests still held when nothing else has happened
for `idle_hold_limit` simulated seconds (only ticks) end the run with an error: the policy would never release them.

Per request the result holds TTFT (arrival to first token), TPOT (mean time between later tokens), end-to-end
latency, prompt / cached / output token counts, finish reason, the engine chosen and, for a disaggregated
request, the prefill engine and its cached tokens.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.engine.kv_events import KVEvent
from kvroute.simulator.engine.profiles import Profile
from kvroute.simulator.engine.request import EngineRequest, RequestOutput


@dataclass(frozen=True, slots=True)
class WorkloadRequest:
    request_id: str
    arrival_time: float
    prompt: str  # text, for policies that look at characters
    prompt_token_ids: list[int]
    max_tokens: int
    lora_name: str | None = None
    cache_hit_threshold: float | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request runs: `decode` alone, or `prefill` first and then `decode` (P/D disaggregation).
    A `prefill` equal to `decode` (or None) means no disaggregation."""

    decode: int
    prefill: int | None = None


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    engine: int  # the engine that produced the tokens (the decode engine of a disaggregated request)
    arrival_time: float
    prompt_tokens: int
    first_token_time: float | None = None
    finish_time: float | None = None
    cached_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    prefill_engine: int | None = None
    prefill_cached_tokens: int = 0  # prompt tokens the prefill engine found in its cache
    prefill_finish_time: float | None = None
    dispatch_time: float | None = None  # when it left the router for an engine (its arrival unless it was held)
    status: int | None = None  # the HTTP status of a router that refused it (never dispatched)

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def e2e(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        if self.first_token_time is None or self.finish_time is None or self.output_tokens < 2:
            return None
        return (self.finish_time - self.first_token_time) / (self.output_tokens - 1)


@dataclass(frozen=True)
class EngineView:
    """What a policy may look at: the engine's index and its live state (read only)."""

    index: int
    engine: Engine

    @property
    def num_waiting(self) -> int:
        return self.engine.num_waiting

    @property
    def num_running(self) -> int:
        return self.engine.num_running

    @property
    def kv_usage(self) -> float:
        return self.engine.kv_usage


class Hold:
    def __repr__(self) -> str:
        return "HOLD"


HOLD = Hold()  # a policy's answer: the request waits in the router until the listener dispatches or rejects it


@dataclass(frozen=True, slots=True)
class Refuse:
    """A policy's answer: the router refuses the request at once with this HTTP status (e.g. 429 when shedding)."""

    status: int


Answer = Union[int, Route, Hold, Refuse]  # noqa: UP007 (a runtime alias)  # an engine, a route, HOLD or a refusal
RoutingPolicy = Callable[[WorkloadRequest, Sequence[EngineView], float], Answer]


@dataclass(frozen=True)
class HarnessControl:
    """What a listener may do with the requests its policy held (`HOLD`), at the current instant."""

    dispatch: Callable[[str, int | Route], None]  # (request id, engine or route)
    reject: Callable[[str, int], None]  # (request id, HTTP status)
    call_soon: Callable[[Callable[[], None]], None]  # run at this instant, after the event being processed


class HarnessListener:
    """Optional callbacks for policies that track requests (in-flight counts, active blocks) or engine state."""

    def on_start(self, control: HarnessControl) -> None:
        """Before the first event: how to dispatch or reject the requests the policy holds."""

    def on_tokens(self, record: RequestRecord, new_tokens: int, now: float) -> None:
        """A step produced `new_tokens` tokens for the request (the first one is its first token)."""

    def on_finish(self, record: RequestRecord, now: float) -> None:
        """The request finished (any reason); called exactly once per request."""

    def on_prefill_done(self, record: RequestRecord, now: float) -> None:
        """The prefill stage of a disaggregated request finished; its decode stage starts now."""

    def on_tick(self, engines: Sequence[EngineView], now: float) -> None:
        """Periodic, with `simulate(..., tick_interval=...)`: e.g. a metrics scrape of every engine."""

    def on_kv_events(self, engine: int, events: Sequence[KVEvent], now: float) -> None:
        """With `simulate(..., record_kv_events=True)`: the KV-cache events of one engine step, in order."""


@dataclass
class SimulationResult:
    records: list[RequestRecord]
    duration: float
    engine_steps: list[int] = field(default_factory=list)
    engine_preemptions: list[int] = field(default_factory=list)

    @property
    def unfinished(self) -> int:
        return sum(1 for r in self.records if r.finish_time is None)


_ARRIVAL, _STEP_END, _TICK, _DISPATCH, _CALL = 0, 1, 2, 3, 4


def simulate(
    profiles: Sequence[Profile],
    workload: Iterable[WorkloadRequest],
    policy: RoutingPolicy,
    *,
    listener: HarnessListener | None = None,
    global_cache_hit_threshold: float | None = None,
    tick_interval: float | None = None,
    record_kv_events: bool = False,
    idle_hold_limit: float = 600.0,
) -> SimulationResult:
    """Run `workload` through one engine per profile, routed by `policy`; returns one record per request."""
    if tick_interval is not None and tick_interval <= 0:
        raise ValueError("tick_interval must be positive")
    engines = [
        Engine(
            p,
            engine_id=f"engine-{i}",
            global_cache_hit_threshold=global_cache_hit_threshold,
            record_kv_events=record_kv_events,
        )
        for i, p in enumerate(profiles)
    ]
    views = [EngineView(i, e) for i, e in enumerate(engines)]
    listener = listener or HarnessListener()
    records: dict[str, RequestRecord] = {}
    ordered: list[RequestRecord] = []
    prefilling: dict[str, WorkloadRequest] = {}  # disaggregated requests in their prefill stage
    pending_outputs: list[list[RequestOutput]] = [[] for _ in engines]
    busy = [False] * len(engines)
    steps = [0] * len(engines)
    heap: list[tuple[float, int, int, object]] = []
    counter = 0
    for request in workload:
        heap.append((request.arrival_time, counter, _ARRIVAL, request))
        counter += 1
    if tick_interval is not None and heap:
        heap.append((0.0, -1, _TICK, None))  # the first scrape precedes everything
    heapq.heapify(heap)
    now = last_event = 0.0

    held: dict[str, WorkloadRequest] = {}

    def dispatch(request_id: str, route: int | Route) -> None:
        nonlocal counter
        if request_id not in held:
            raise ValueError(f"request {request_id!r} is not held")
        heapq.heappush(heap, (now, counter, _DISPATCH, (held.pop(request_id), route)))
        counter += 1

    def call_soon(callback: Callable[[], None]) -> None:
        nonlocal counter
        heapq.heappush(heap, (now, counter, _CALL, callback))
        counter += 1

    def reject(request_id: str, status: int) -> None:
        if held.pop(request_id, None) is None:
            raise ValueError(f"request {request_id!r} is not held")
        refuse(records[request_id], status)

    def refuse(record: RequestRecord, status: int) -> None:
        record.status = status
        record.finish_time = now
        record.finish_reason = "rejected"

    def start(payload: WorkloadRequest, route: int | Route, at: float) -> None:
        if not isinstance(route, Route):
            route = Route(route)
        record = records[payload.request_id]
        record.engine = route.decode
        record.dispatch_time = at
        if route.prefill is not None and route.prefill != route.decode:
            record.prefill_engine = route.prefill
            prefilling[payload.request_id] = payload
            submit(route.prefill, _engine_request(payload, at, {"do_remote_decode": True}, max_tokens=1), at)
        else:
            submit(route.decode, _engine_request(payload, at), at)

    def submit(index: int, request: EngineRequest, at: float) -> None:
        engines[index].add_request(request)
        if not busy[index]:
            start_step(index, at)

    def end_prefill(record: RequestRecord, out: RequestOutput, at: float) -> None:
        payload = prefilling.pop(record.request_id)
        record.prefill_cached_tokens = out.num_cached_tokens
        record.prefill_finish_time = at
        listener.on_prefill_done(record, at)
        params = dict(out.kv_transfer_params or {"do_remote_prefill": True})
        submit(record.engine, _engine_request(payload, record.arrival_time, params), at)

    def deliver(outputs: list[RequestOutput], at: float) -> None:
        for out in outputs:
            record = records[out.request_id]
            if out.request_id in prefilling:
                if out.finish_reason is not None:
                    end_prefill(record, out, at)
                continue
            if out.new_tokens:
                if record.first_token_time is None:
                    record.first_token_time = at
                    record.cached_tokens = out.num_cached_tokens
                record.output_tokens = out.num_output_tokens
                listener.on_tokens(record, out.new_tokens, at)
            if out.finish_reason is not None:
                record.finish_time = at
                record.finish_reason = out.finish_reason.value
                record.cached_tokens = out.num_cached_tokens
                listener.on_finish(record, at)

    def start_step(index: int, at: float) -> None:
        nonlocal counter
        engine = engines[index]
        while engine.has_work():
            result = engine.step(at)
            steps[index] += 1
            if record_kv_events:
                events = engine.drain_kv_events()
                if events:
                    listener.on_kv_events(index, events, at)
            if result.duration > 0:
                pending_outputs[index] = result.outputs
                busy[index] = True
                heapq.heappush(heap, (at + result.duration, counter, _STEP_END, index))
                counter += 1
                return
            busy[index] = True  # outputs delivered below may submit to this engine: it is stepping now
            deliver(result.outputs, at)
            wake = engine.next_wakeup()
            if wake is not None and engine.has_work():
                heapq.heappush(heap, (max(wake, at), counter, _STEP_END, index))
                counter += 1
                return
            if not result.outputs:
                break  # nothing runnable until something arrives
        busy[index] = False

    listener.on_start(HarnessControl(dispatch, reject, call_soon))
    while heap:
        now, _, kind, payload = heapq.heappop(heap)
        if kind == _TICK:
            listener.on_tick(views, now)
            if heap or (held and now - last_event < idle_hold_limit):
                assert tick_interval is not None
                heapq.heappush(heap, (now + tick_interval, counter, _TICK, None))
                counter += 1
            continue
        last_event = now
        if kind == _ARRIVAL:
            assert isinstance(payload, WorkloadRequest)
            record = RequestRecord(payload.request_id, -1, now, len(payload.prompt_token_ids))
            records[payload.request_id] = record
            ordered.append(record)
            route = policy(payload, views, now)
            if isinstance(route, Hold):
                held[payload.request_id] = payload
            elif isinstance(route, Refuse):
                refuse(record, route.status)
            else:
                start(payload, route, now)
        elif kind == _DISPATCH:
            assert isinstance(payload, tuple)
            start(payload[0], payload[1], now)
        elif kind == _CALL:
            assert callable(payload)
            payload()
        else:
            assert isinstance(payload, int)
            outputs, pending_outputs[payload] = pending_outputs[payload], []
            deliver(outputs, now)
            start_step(payload, now)
    if held:
        raise RuntimeError(f"the policy never dispatched nor rejected {len(held)} held request(s)")
    return SimulationResult(
        records=ordered,
        duration=last_event,
        engine_steps=steps,
        engine_preemptions=[e.num_preemptions for e in engines],
    )


def _engine_request(
    payload: WorkloadRequest,
    arrival: float,
    kv_transfer_params: dict[str, Any] | None = None,
    *,
    max_tokens: int | None = None,
) -> EngineRequest:
    return EngineRequest(
        request_id=payload.request_id,
        prompt_token_ids=payload.prompt_token_ids,
        max_tokens=payload.max_tokens if max_tokens is None else max_tokens,
        arrival_time=arrival,
        lora_name=payload.lora_name,
        # Both stages of a disaggregated request always run; a threshold applies only to a request served whole.
        cache_hit_threshold=payload.cache_hit_threshold if kv_transfer_params is None else None,
        kv_transfer_params=kv_transfer_params,
    )
