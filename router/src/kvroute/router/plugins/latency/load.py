"""The work each endpoint has in flight through this router (and its fleet peers), one request at a time.

A request is charged to one endpoint when it is scheduled and moves through two phases:

- prefilling (until its first output token): its uncached prompt tokens count in `prefill_tokens`, the
  request in `prefilling`;
- decoding (until it completes, any outcome): the request counts in `decoding`, and the tokens it attends
  over (`context_tokens`: its prompt and about half its expected output) in `context_tokens`.

From scheduling to completion it also holds `kv_tokens` of KV cache: its prompt plus its expected output.

The engine computes prompts first come, first served, so the oldest prefilling request is being computed: its
progress is subtracted from the work still ahead of a new request (`remaining_prefill`):

    remaining = prefill_tokens - min(own_head, (now - head_since) / prefill_seconds_per_token)

where `head_since` is when the head became the head (its scheduling, or the first token of the request before
it, whichever is later).
Every transition is idempotent (a `Flight` remembers its phase), so a chunk arriving after completion or a
second completion changes nothing. An endpoint whose counters all return to zero is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kvroute.router.plugins.latency.model import Features


@dataclass(slots=True)
class EndpointLoad:
    prefill_tokens: int = 0
    prefilling: int = 0
    decoding: int = 0
    context_tokens: int = 0
    kv_tokens: int = 0
    # The prefilling requests, oldest first (by id()), and when the oldest became the oldest: bookkeeping, not
    # part of what the load is (equality and repr leave them out).
    queue: dict[int, Flight] = field(default_factory=dict, compare=False, repr=False)
    head_since: float = field(default=0.0, compare=False, repr=False)

    @property
    def idle(self) -> bool:
        return not (self.prefill_tokens or self.prefilling or self.decoding or self.context_tokens or self.kv_tokens)

    def remaining_prefill(self, now: float, prefill_seconds_per_token: float) -> float:
        """Prompt tokens still to compute, the head's progress deducted (module docstring)."""
        if not self.queue:
            return float(self.prefill_tokens)
        head = next(iter(self.queue.values()))
        done = max(0.0, now - self.head_since) / prefill_seconds_per_token if prefill_seconds_per_token > 0 else 0.0
        return self.prefill_tokens - min(float(head.own_tokens), done)

    def leave_queue(self, flight: Flight, now: float) -> None:
        """The request is no longer prefilling here; the next oldest becomes the head from `now`."""
        key = id(flight)
        was_head = next(iter(self.queue), None) == key
        self.queue.pop(key, None)
        if was_head and self.queue:
            head = next(iter(self.queue.values()))
            self.head_since = max(now, head.scheduled_at)


@dataclass(slots=True)
class Flight:
    """One request's charge, and what its first token will teach the learner."""

    endpoint_id: str
    own_tokens: int  # uncached prompt tokens
    context_tokens: int
    kv_tokens: int
    features: Features  # of its predicted TTFT (`model.ttft_features`), at scheduling
    scheduled_at: float
    learn: bool  # False for a peer's request: its timings reach this router late
    learn_ttft: bool = True  # False when the prompt was computed elsewhere (P/D): the TTFT is not this endpoint's
    last_chunk_at: float = 0.0
    decoding: bool = False
    done: bool = False


class LoadBook:
    def __init__(self) -> None:
        self._loads: dict[str, EndpointLoad] = {}

    def get(self, endpoint_id: str) -> EndpointLoad:
        """The endpoint's load (a zero load when nothing is charged; never stored)."""
        return self._loads.get(endpoint_id) or EndpointLoad()

    def charged(self, endpoint_ids: Iterable[str]) -> list[EndpointLoad | None]:
        """Each endpoint's load, in order, None for one with nothing charged."""
        get = self._loads.get
        return [get(endpoint_id) for endpoint_id in endpoint_ids]

    def charge(self, flight: Flight) -> None:
        load = self._loads.get(flight.endpoint_id)
        if load is None:
            load = self._loads[flight.endpoint_id] = EndpointLoad()
        load.prefill_tokens += flight.own_tokens
        load.prefilling += 1
        load.kv_tokens += flight.kv_tokens
        if not load.queue:
            load.head_since = flight.scheduled_at
        load.queue[id(flight)] = flight

    def first_token(self, flight: Flight, now: float) -> None:
        """The request's prefill is over: it decodes from now on."""
        if flight.decoding or flight.done:
            return
        flight.decoding = True
        load = self._loads[flight.endpoint_id]
        load.leave_queue(flight, now)
        load.prefill_tokens -= flight.own_tokens
        load.prefilling -= 1
        load.decoding += 1
        load.context_tokens += flight.context_tokens

    def complete(self, flight: Flight, now: float) -> None:
        if flight.done:
            return
        flight.done = True
        load = self._loads[flight.endpoint_id]
        if flight.decoding:
            load.decoding -= 1
            load.context_tokens -= flight.context_tokens
        else:
            load.leave_queue(flight, now)
            load.prefill_tokens -= flight.own_tokens
            load.prefilling -= 1
        load.kv_tokens -= flight.kv_tokens
        if load.idle:
            del self._loads[flight.endpoint_id]

    def move(self, flight: Flight, endpoint_id: str, now: float) -> None:
        """The request went to another endpoint than the one charged (a fallback)."""
        if flight.done or flight.endpoint_id == endpoint_id:
            return
        decoding = flight.decoding
        self.complete(flight, now)
        flight.endpoint_id, flight.done, flight.decoding = endpoint_id, False, False
        self.charge(flight)
        if decoding:
            self.first_token(flight, now)

    def __len__(self) -> int:
        return len(self._loads)
