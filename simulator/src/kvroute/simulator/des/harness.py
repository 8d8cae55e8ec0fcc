"""Discrete-event simulation of a fleet of engines behind a routing policy.

The same `Engine` code as the real-time server runs under a virtual clock: a heap of timed events (request
arrivals, ends of engine steps) is processed in time order, ties broken by insertion order, so a run is a pure
function of its inputs (profiles, workload, policy and the policy's seed). At each arrival the policy is asked
for an engine index, given read-only views of every engine's true state; the request joins that engine's waiting
queue and an idle engine starts a step at once. When a step ends its outputs are delivered (first token, tokens,
finish) to the records and to an optional listener, and the engine steps again while it has work.

Per request the result holds TTFT (arrival to first token), TPOT (mean time between later tokens), end-to-end
latency, prompt / cached / output token counts, finish reason and the engine chosen.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from kvroute.simulator.engine.engine import Engine
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


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    engine: int
    arrival_time: float
    prompt_tokens: int
    first_token_time: float | None = None
    finish_time: float | None = None
    cached_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None

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


RoutingPolicy = Callable[[WorkloadRequest, Sequence[EngineView], float], int]


class HarnessListener:
    """Optional callbacks for policies that track requests (in-flight counts, active blocks)."""

    def on_tokens(self, record: RequestRecord, new_tokens: int, now: float) -> None:
        """A step produced `new_tokens` tokens for the request (the first one is its first token)."""

    def on_finish(self, record: RequestRecord, now: float) -> None:
        """The request finished (any reason); called exactly once per request."""


@dataclass
class SimulationResult:
    records: list[RequestRecord]
    duration: float
    engine_steps: list[int] = field(default_factory=list)
    engine_preemptions: list[int] = field(default_factory=list)

    @property
    def unfinished(self) -> int:
        return sum(1 for r in self.records if r.finish_time is None)


_ARRIVAL, _STEP_END = 0, 1


def simulate(
    profiles: Sequence[Profile],
    workload: Iterable[WorkloadRequest],
    policy: RoutingPolicy,
    *,
    listener: HarnessListener | None = None,
    global_cache_hit_threshold: float | None = None,
) -> SimulationResult:
    """Run `workload` through one engine per profile, routed by `policy`; returns one record per request."""
    engines = [
        Engine(p, engine_id=f"engine-{i}", global_cache_hit_threshold=global_cache_hit_threshold)
        for i, p in enumerate(profiles)
    ]
    views = [EngineView(i, e) for i, e in enumerate(engines)]
    listener = listener or HarnessListener()
    records: dict[str, RequestRecord] = {}
    ordered: list[RequestRecord] = []
    pending_outputs: list[list[RequestOutput]] = [[] for _ in engines]
    busy = [False] * len(engines)
    steps = [0] * len(engines)
    heap: list[tuple[float, int, int, object]] = []
    counter = 0
    for request in workload:
        heap.append((request.arrival_time, counter, _ARRIVAL, request))
        counter += 1
    heapq.heapify(heap)
    now = 0.0

    def deliver(outputs: list[RequestOutput], at: float) -> None:
        for out in outputs:
            record = records[out.request_id]
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
            if result.duration > 0:
                pending_outputs[index] = result.outputs
                busy[index] = True
                heapq.heappush(heap, (at + result.duration, counter, _STEP_END, index))
                counter += 1
                return
            deliver(result.outputs, at)
            wake = engine.next_wakeup()
            if wake is not None and engine.has_work():
                busy[index] = True
                heapq.heappush(heap, (max(wake, at), counter, _STEP_END, index))
                counter += 1
                return
            if not result.outputs:
                break  # nothing runnable until something arrives
        busy[index] = False

    while heap:
        now, _, kind, payload = heapq.heappop(heap)
        if kind == _ARRIVAL:
            assert isinstance(payload, WorkloadRequest)
            index = policy(payload, views, now)
            record = RequestRecord(payload.request_id, index, now, len(payload.prompt_token_ids))
            records[payload.request_id] = record
            ordered.append(record)
            engines[index].add_request(
                EngineRequest(
                    request_id=payload.request_id,
                    prompt_token_ids=payload.prompt_token_ids,
                    max_tokens=payload.max_tokens,
                    arrival_time=now,
                    lora_name=payload.lora_name,
                    cache_hit_threshold=payload.cache_hit_threshold,
                )
            )
            if not busy[index]:
                start_step(index, now)
        else:
            assert isinstance(payload, int)
            outputs, pending_outputs[payload] = pending_outputs[payload], []
            deliver(outputs, now)
            start_step(payload, now)
    return SimulationResult(
        records=ordered,
        duration=now,
        engine_steps=steps,
        engine_preemptions=[e.num_preemptions for e in engines],
    )
