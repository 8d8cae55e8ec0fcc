"""Precise prefix routing from the engines' KV events: the router's `precise-prefix-cache-scorer` in the harness.

The simulated engines record their KV-cache events as a vLLM engine publishes them (`record_kv_events`); each
step's events reach the plugin `KV_EVENTS_DELAY_S` after the step scheduled the blocks (vLLM publishes them from
a background thread over ZMQ), converted to the router's event types and handed to `on_kv_events` exactly as the
router's ZMQ subscriber does. The plugin tokenizes prompts with its `estimate` tokenizer, which gives the
simulator's token ids, and its speculative entries expire on the simulated clock.

Two policies use it:

- `llmd-precise`: llm-d's "precise" configuration of its 73%-capacity benchmark (precise prefix 3, KV
  utilization 2, queue 2; reference/llmd.md, 5(a));
- `kvroute-precise`: kvroute's recommended configuration with the precise scorer in place of the approximate
  one (`recommended_config_text(precise=True)`), for fleets whose engines publish KV events.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from kvroute.bench.quality.adapter import SchedulerPolicy
from kvroute.bench.quality.workloads import Fleet
from kvroute.router.framework import KVEventsConsumer
from kvroute.router.framework import kv_events as router_events
from kvroute.simulator.des.harness import EngineView, Route, WorkloadRequest
from kvroute.simulator.engine import kv_events as engine_events

KV_EVENTS_DELAY_S = 0.001
SERVED_MODEL = "meta-llama/Llama-3.1-8B-Instruct"  # the topic's model, as the adapter's requests name it


def convert(event: engine_events.KVEvent) -> router_events.KVEvent:
    """An engine's event as the router's subscriber decodes it from the wire."""
    if isinstance(event, engine_events.BlockStored):
        return router_events.BlockStored(
            block_hashes=event.block_hashes,
            parent_block_hash=event.parent_block_hash,
            token_ids=event.token_ids,
            block_size=event.block_size,
            medium=router_events.GPU_MEDIUM,
            lora_name=event.lora_name,
        )
    if isinstance(event, engine_events.BlockRemoved):
        return router_events.BlockRemoved(event.block_hashes, router_events.GPU_MEDIUM)
    return router_events.AllBlocksCleared()


class KVEventsSchedulerPolicy(SchedulerPolicy):
    """kvroute's scheduler whose KV-event consumers hear the simulated engines' events."""

    needs_kv_events = True

    def __init__(self, config_text: str, fleet: Fleet, seed: int) -> None:
        super().__init__(config_text, fleet, seed)
        self._now = 0.0
        self._consumers = [p for p in self.config.plugins.values() if isinstance(p, KVEventsConsumer)]
        for plugin in self._consumers:
            plugin.clock = lambda: self._now  # type: ignore[attr-defined]
        self._pending: list[tuple[float, int, int, list[router_events.KVEvent]]] = []
        self._order = 0

    def on_kv_events(self, engine: int, events: Sequence[engine_events.KVEvent], now: float) -> None:
        heapq.heappush(self._pending, (now + KV_EVENTS_DELAY_S, self._order, engine, [convert(e) for e in events]))
        self._order += 1

    def route(self, request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> int | Route:
        self._deliver(now)
        return super().route(request, engines, now)

    def on_tick(self, engines: Sequence[EngineView], now: float) -> None:
        self._deliver(now)
        super().on_tick(engines, now)

    def _deliver(self, now: float) -> None:
        pending = self._pending
        while pending and pending[0][0] <= now:
            at, _, engine, events = heapq.heappop(pending)
            self._now = at
            for plugin in self._consumers:
                plugin.on_kv_events(self.endpoints[engine], SERVED_MODEL, events)
        self._now = now
