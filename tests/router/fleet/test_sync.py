"""Fleet sync between router replicas, in process: what one replica schedules, its peers apply as their own."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from kvroute.router.config.builder import LoadedConfig
from kvroute.router.config.loader import load_config
from kvroute.router.config.recommended import recommended_config_text
from kvroute.router.fleet.sync import FleetSync
from kvroute.router.framework import ApiKind, CycleState, Endpoint, EndpointMetrics, LLMRequest, SchedulingResult
from kvroute.router.plugins.registry import REGISTRY

from .conftest import LOAD_SCORERS_CONFIG

ENDPOINTS = [Endpoint.create(f"127.0.0.{i}", 8000) for i in range(2, 6)]
BY_ID = {e.id: e for e in ENDPOINTS}
for _endpoint in ENDPOINTS:
    _endpoint.metrics = EndpointMetrics(waiting=0, running=0, kv_usage=0.0, scraped_at=1.0, stale=False)


class Replica:
    """One router replica: a configuration, its sync, and the requests it scheduled itself."""

    def __init__(self, name: str, seed: int = 0, config: str | None = None) -> None:
        text = recommended_config_text() if config is None else config
        self.config: LoadedConfig = load_config(text, REGISTRY, rng=random.Random(seed))
        self.sync = FleetSync(name, lambda: self.config, lambda: BY_ID, peer_timeout=5.0, stale_request=60.0)
        self.states: dict[str, CycleState] = {}

    def schedule(self, request_id: str, prompt: str) -> SchedulingResult:
        request = LLMRequest(request_id, "m", ApiKind.COMPLETIONS, prompt, {"model": "m"}, {})
        state = CycleState()
        result = self.config.scheduler.schedule(request, ENDPOINTS, state)
        for hook in self.config.pre_request:
            hook.pre_request(state, request, result)
        self.sync.scheduled(self.config, state, request, result)
        self.states[request_id] = state
        return result

    def plugin(self, name: str) -> Any:
        return self.config.plugins[name]


def _charged(replica: Replica, endpoint_id: str) -> int:
    """The prompt tokens the replica's load scorer has charged to an endpoint for requests without a first token:
    the token-load scorer's in the load-scorers configuration, the predicted-latency scorer's in the recommended."""
    if "token-load-scorer" in replica.config.plugins:
        return int(replica.plugin("token-load-scorer").in_flight_tokens(endpoint_id))
    return int(replica.plugin("predicted-latency-scorer").load(endpoint_id).prefill_tokens)


CONFIGS = pytest.mark.parametrize("config", [LOAD_SCORERS_CONFIG, None], ids=["load-scorers", "recommended"])


def _send(sender: Replica, *receivers: Replica, now: float = 1.0) -> None:
    batch = sender.sync.take_batch(now)
    assert batch is not None
    for receiver in receivers:
        receiver.sync.receive(batch, now)


def test_a_peer_routes_a_prefix_where_the_replica_that_first_saw_it_sent_it() -> None:
    a, b, alone = Replica("a"), Replica("b"), Replica("alone")
    prompts = [f"system prompt {i} " * 40 + "question" for i in range(8)]
    picked = {i: a.schedule(f"r{i}", p).endpoints[0].id for i, p in enumerate(prompts)}
    _send(a, b)
    # The peer sees the prefixes in another order; it still sends each where replica a did.
    order = list(reversed(range(len(prompts))))
    assert {i: b.schedule(f"s{i}", prompts[i] + " another").endpoints[0].id for i in order} == picked
    # Without the batch, a replica spreads the same prefixes by its own cold-request order.
    assert {i: alone.schedule(f"t{i}", prompts[i] + " another").endpoints[0].id for i in order} != picked


def test_in_flight_charges_follow_the_peer_request_to_its_completion() -> None:
    a, b = Replica("a", config=LOAD_SCORERS_CONFIG), Replica("b", config=LOAD_SCORERS_CONFIG)
    target = a.schedule("r1", "x" * 4000).endpoints[0].id
    _send(a, b)
    tokens, blocks = b.plugin("token-load-scorer"), b.plugin("active-blocks-scorer")
    assert tokens.in_flight_tokens(target) == a.plugin("token-load-scorer").in_flight_tokens(target) == 1000
    assert blocks.active_blocks(target) == a.plugin("active-blocks-scorer").active_blocks(target) > 0
    assert b.sync.open_peer_requests == 1

    a.sync.progress("r1", 1)
    a.sync.progress("r1", 40)  # replaces the first: one progress record per request and batch
    _send(a, b, now=1.1)
    assert tokens.in_flight_tokens(target) == 0  # the first token released the prefill charge
    assert blocks.prefilling_blocks(target) == 0

    a.sync.completed("r1")
    _send(a, b, now=1.2)
    assert blocks.active_blocks(target) == 0
    assert b.sync.open_peer_requests == 0


def test_the_predicted_latency_load_follows_the_peer_request_to_its_completion() -> None:
    """The same for the recommended configuration's load: the predicted-latency scorer's."""
    a, b = Replica("a"), Replica("b")
    target = a.schedule("r1", "x" * 4000).endpoints[0].id
    _send(a, b)
    scorer = b.plugin("predicted-latency-scorer")
    load = scorer.load(target)
    assert load == a.plugin("predicted-latency-scorer").load(target)
    assert (load.prefill_tokens, load.prefilling, load.decoding) == (1000, 1, 0)
    assert load.kv_tokens > 1000 and load.context_tokens == 0  # the context counts once the request decodes
    assert b.sync.open_peer_requests == 1

    a.sync.progress("r1", 1)
    a.sync.progress("r1", 40)
    _send(a, b, now=1.1)
    load = scorer.load(target)
    assert (load.prefill_tokens, load.prefilling, load.decoding) == (0, 0, 1)  # the first token ended the prefill
    assert load.context_tokens > 1000

    a.sync.completed("r1")
    _send(a, b, now=1.2)
    assert scorer.load(target).idle and len(scorer.loads) == 0
    assert b.sync.open_peer_requests == 0


@CONFIGS
def test_a_silent_peer_has_its_requests_released_and_a_restarted_one_too(config: str | None) -> None:
    a, b = Replica("a", config=config), Replica("b", config=config)
    target = a.schedule("r1", "y" * 4000).endpoints[0].id
    _send(a, b, now=1.0)
    assert _charged(b, target) > 0
    assert b.sync.expire_peers(5.0) == []
    assert b.sync.expire_peers(6.5) == ["a"]
    assert _charged(b, target) == 0 and not b.sync.peers

    a.schedule("r2", "z" * 4000)
    _send(a, b, now=7.0)
    assert sum(_charged(b, e.id) for e in ENDPOINTS) > 0 and b.sync.open_peer_requests == 1
    restarted = Replica("a", config=config)  # same replica id, new incarnation
    assert restarted.sync.take_batch(8.0) is not None  # a heartbeat: nothing recorded yet
    b.sync.receive(restarted.sync.take_batch(9.5) or b"", 9.5)
    assert b.sync.open_peer_requests == 0 and sum(_charged(b, e.id) for e in ENDPOINTS) == 0


def test_batches_come_at_least_every_heartbeat_and_gaps_are_counted() -> None:
    a, b = Replica("a"), Replica("b")
    assert a.sync.take_batch(0.0) is not None  # the first heartbeat
    assert a.sync.take_batch(0.5) is None
    first = a.sync.take_batch(1.0)
    assert first is not None
    a.schedule("r1", "w" * 400)
    a.sync.take_batch(1.1)  # lost on the way
    a.sync.completed("r1")
    last = a.sync.take_batch(1.2)
    assert last is not None
    b.sync.receive(first, 1.0)
    b.sync.receive(last, 1.2)
    assert b.sync.counters.sequence_gaps == 1
    assert b.sync.counters.received_batches == 2


def test_stale_peer_requests_are_completed() -> None:
    a, b = Replica("a", config=LOAD_SCORERS_CONFIG), Replica("b", config=LOAD_SCORERS_CONFIG)
    target = a.schedule("r1", "v" * 4000).endpoints[0].id
    _send(a, b, now=1.0)
    for now in (20.0, 40.0, 60.0):
        b.sync.receive(a.sync.take_batch(now) or b"", now)  # heartbeats keep the peer, not the request
    b.sync.expire_peers(62.0)
    assert b.sync.counters.stale_requests == 1
    assert b.plugin("active-blocks-scorer").active_blocks(target) == 0


def test_stale_peer_requests_release_the_predicted_latency_load() -> None:
    a, b = Replica("a"), Replica("b")
    a.schedule("r1", "v" * 4000)
    _send(a, b, now=1.0)
    scorer = b.plugin("predicted-latency-scorer")
    assert len(scorer.loads) == 1
    for now in (20.0, 40.0, 60.0):
        b.sync.receive(a.sync.take_batch(now) or b"", now)
    b.sync.expire_peers(62.0)
    assert b.sync.counters.stale_requests == 1
    assert len(scorer.loads) == 0


def test_own_batches_are_ignored() -> None:
    a = Replica("a")
    a.schedule("r1", "u" * 4000)
    a.sync.receive(a.sync.take_batch(1.0) or b"", 1.0)
    assert not a.sync.peers


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        msgpack.packb({"not": "a batch"}),
        msgpack.packb([2, "a", "i", 1, 0.0, []]),
        msgpack.packb([1, 7, "i", 1, 0.0, []]),
        msgpack.packb([1, "a", "i", 1, 0.0, [5]]),
    ],
)
def test_malformed_batches_raise_value_error_and_change_nothing(data: bytes) -> None:
    b = Replica("b")
    with pytest.raises(ValueError):
        b.sync.receive(data, 1.0)
    assert not b.sync.peers


def test_records_a_plugin_rejects_are_counted_and_skipped() -> None:
    b = Replica("b", config=LOAD_SCORERS_CONFIG)
    records: list[Any] = [
        [0, "r1", ENDPOINTS[0].id, {"prefix-cache-scorer": ["prefix-cache-scorer", ["not", "hashes"]]}],
        [0, "r2", ENDPOINTS[0].id, {"token-load-scorer": ["token-load-scorer", [ENDPOINTS[0].id, -5]]}],
        [0, "r3", ENDPOINTS[0].id, {"token-load-scorer": ["another-type", [ENDPOINTS[0].id, 5]]}],
        [9, "r4"],
        [1, 12, 3],
        [0, "r5", ENDPOINTS[1].id, {"token-load-scorer": ["token-load-scorer", [ENDPOINTS[1].id, 7]]}],
    ]
    b.sync.receive(msgpack.packb([1, "a", "i", 1, 0.0, records]), 1.0)
    assert b.sync.counters.rejected_records == 4
    assert b.plugin("token-load-scorer").in_flight_tokens(ENDPOINTS[1].id) == 7
    assert b.plugin("token-load-scorer").in_flight_tokens(ENDPOINTS[0].id) == 0
    assert b.sync.open_peer_requests == 1


def test_records_the_recommended_plugins_reject_are_counted_and_skipped() -> None:
    b = Replica("b")
    e0, e1 = ENDPOINTS[0].id, ENDPOINTS[1].id
    prefix, latency = "approx-prefix-cache-producer", "predicted-latency-scorer"
    records: list[Any] = [
        [0, "r1", e0, {prefix: [prefix, [[e0], "not packed hashes"]]}],
        [0, "r2", e0, {latency: [latency, [e0, -5, 10, 10]]}],
        [0, "r3", e0, {latency: ["another-type", [e0, 5, 10, 10]]}],
        [9, "r4"],
        [1, 12, 3],
        [0, "r5", e1, {latency: [latency, [e1, 7, 9, 11]]}],
    ]
    b.sync.receive(msgpack.packb([1, "a", "i", 1, 0.0, records]), 1.0)
    assert b.sync.counters.rejected_records == 4
    scorer = b.plugin(latency)
    load = scorer.load(e1)
    assert (load.prefill_tokens, load.prefilling, load.kv_tokens) == (7, 1, 11)
    assert scorer.load(e0).idle
    assert b.sync.open_peer_requests == 1


def test_a_batch_heard_twice_is_applied_once() -> None:
    a, b = Replica("a", config=LOAD_SCORERS_CONFIG), Replica("b", config=LOAD_SCORERS_CONFIG)
    target = a.schedule("r1", "t" * 4000).endpoints[0].id
    scheduled = a.sync.take_batch(1.0) or b""
    a.sync.completed("r1")
    completed = a.sync.take_batch(1.1) or b""

    for data, now in ((scheduled, 1.0), (scheduled, 1.0), (completed, 1.1), (scheduled, 1.2), (completed, 1.2)):
        b.sync.receive(data, now)  # a peer on two paths (its workers' IPC and TCP) delivers each batch twice

    assert b.sync.counters.duplicate_batches == 3
    assert b.sync.counters.received_batches == 2 and b.sync.counters.sequence_gaps == 0
    assert b.sync.open_peer_requests == 0
    assert b.plugin("active-blocks-scorer").active_blocks(target) == 0
