"""FleetTransport with real ZMQ sockets on loopback: replicas in one process exchange their routing state."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import zmq

from kvroute.router.config.recommended import recommended_config_text
from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.fleet.peers import StaticPeers
from kvroute.router.fleet.sync import FleetSync
from kvroute.router.fleet.transport import FleetSettings, FleetTransport
from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest, Scorer
from kvroute.router.observability import RouterMetrics
from kvroute.router.plugins.registry import REGISTRY
from kvroute.router.plugins.scorers.predicted_latency import PredictedLatencyScorer
from kvroute.router.requestcontrol.director import Director
from kvroute.router.requestcontrol.handle import RequestHandle
from tests.support import eventually

from .conftest import LOAD_SCORERS_CONFIG

MODEL = "fleet-model"
ENDPOINTS = tuple(Endpoint.create(f"127.0.9.{i}", 8000) for i in range(1, 5))
# The fleet sockets of these tests; away from the simulators' 127.0.0.x and the proxies' 127.0.3-4.x.
_HOSTS = itertools.cycle(f"127.0.8.{i}" for i in range(1, 255))
_ids = itertools.count(1)


def prompt(n: int) -> str:
    """Distinct from the first character on, and long enough for several prefix blocks (64 characters each)."""
    return f"{n:04d} " + f"document {n} says: " * 30


@dataclass
class Replica:
    """A router's core without a front door: a Director with fleet sync, and the transport."""

    name: str
    holder: ConfigHolder
    pool: EndpointPool
    director: Director
    sync: FleetSync
    transport: FleetTransport

    def route(self, text: str) -> RequestHandle:
        """Schedules a request (the Director records it for the peers); the caller completes the handle."""
        body = json.dumps({"model": MODEL, "prompt": text, "max_tokens": 2}).encode()
        return self.director.start(ApiKind.COMPLETIONS, body, [("x-request-id", f"{self.name}-{next(_ids)}")])

    def serve(self, text: str) -> str:
        """A request from start to completion; its target."""
        handle = self.route(text)
        handle.complete()
        return handle.endpoint.id

    def token_load(self, endpoint_id: str) -> float:
        """The token-load scorer's score of an endpoint for a new request: 1.0 when nothing is in flight."""
        scorer = self.holder.current.plugins["token-load-scorer"]
        assert isinstance(scorer, Scorer)
        request = LLMRequest("probe", MODEL, ApiKind.COMPLETIONS, "probe", {}, {})
        return scorer.score(CycleState(), request, self.pool.snapshot())[endpoint_id]

    def load(self, endpoint_id: str) -> object:
        """The in-flight load charged to an endpoint, as the configuration's load scorer sees it: the token-load
        scorer's score (1.0 when nothing is in flight), else the predicted-latency scorer's `EndpointLoad`."""
        plugins = self.holder.current.plugins
        if "token-load-scorer" in plugins:
            return self.token_load(endpoint_id)
        scorer = plugins["predicted-latency-scorer"]
        assert isinstance(scorer, PredictedLatencyScorer)
        return scorer.load(endpoint_id)

    def idle(self, endpoint_id: str) -> bool:
        """Whether nothing is charged to the endpoint (for the predicted-latency scorer: to any endpoint)."""
        plugins = self.holder.current.plugins
        if "token-load-scorer" in plugins:
            return self.token_load(endpoint_id) == 1.0
        scorer = plugins["predicted-latency-scorer"]
        assert isinstance(scorer, PredictedLatencyScorer)
        return len(scorer.loads) == 0


Start = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def replicas() -> AsyncIterator[Start]:
    started: list[Replica] = []

    async def start(
        name: str, *, peer_timeout: float = 10.0, host: str | None = None, port: int = 0, config: str | None = None
    ) -> Replica:
        holder = ConfigHolder.load(REGISTRY, recommended_config_text() if config is None else config)
        pool = EndpointPool(ENDPOINTS)
        sync = FleetSync(name, lambda: holder.current, pool.by_id, peer_timeout=peer_timeout)
        settings = FleetSettings(name, StaticPeers(()), host=host or next(_HOSTS), port=port, interval=0.005)
        transport = FleetTransport(sync, settings)
        await transport.start()
        replica = Replica(name, holder, pool, Director(holder, pool, fleet=sync), sync, transport)
        started.append(replica)
        return replica

    try:
        yield start
    finally:
        for replica in started:
            await replica.transport.stop()


# The load scorers' configuration (token-load) and the recommended one (predicted-latency): both share their
# in-flight charges with the peers.
WAIT = 20.0  # generous: the machine running the tests may be loaded

CONFIGS = pytest.mark.parametrize("config", [LOAD_SCORERS_CONFIG, None], ids=["load-scorers", "recommended"])


async def connect(*replicas: Replica) -> None:
    """Every replica subscribes to every replica, itself included, and hears from all the others."""
    addresses = [r.transport.address for r in replicas]
    for replica in replicas:
        replica.transport.set_peers(addresses)
    for replica in replicas:
        others = {r.name for r in replicas} - {replica.name}
        await eventually(
            lambda r=replica, o=others: set(r.sync.peers) == o, WAIT, message=f"{replica.name} hears {others}"
        )


async def test_a_peer_routes_a_known_prefix_where_the_replica_that_saw_it_sent_it(replicas: Start) -> None:
    a, b = await replicas("a"), await replicas("b")
    await connect(a, b)

    # Cold prompts spread over the pool by the no-hit LRU: four prompts, four endpoints.
    picks_a = [a.serve(prompt(n)) for n in range(4)]
    assert sorted(picks_a) == sorted(e.id for e in ENDPOINTS)
    await eventually(
        lambda: b.sync.counters.applied_records >= 8, WAIT, message="b applies a's 4 decisions and completions"
    )
    assert b.sync.open_peer_requests == 0

    # b never saw them, yet sends each where a did: its prefix index holds a's decisions.
    assert [b.serve(prompt(n)) for n in range(4)] == picks_a
    # b's own decisions reach a; a replica's own batches (it subscribes to itself too) are ignored.
    applied_by_a = a.sync.counters.applied_records
    await eventually(
        lambda: a.sync.counters.applied_records >= applied_by_a + 8, WAIT, message="a applies b's decisions"
    )
    assert a.transport.malformed == b.transport.malformed == 0
    assert "a" not in a.sync.peers and "b" not in b.sync.peers


@CONFIGS
async def test_in_flight_load_is_shared_and_released_on_completion(replicas: Start, config: str | None) -> None:
    a, b = await replicas("a", config=config), await replicas("b", config=config)
    await connect(a, b)

    handle = a.route(prompt(7))
    target = handle.endpoint.id
    assert not a.idle(target)
    await eventually(lambda: b.sync.open_peer_requests == 1, WAIT, message="b charges a's request")
    assert b.load(target) == a.load(target)

    handle.complete()
    await eventually(lambda: b.sync.open_peer_requests == 0, WAIT, message="b releases it")
    assert b.idle(target)


async def test_malformed_messages_are_counted_and_the_loop_goes_on(replicas: Start) -> None:
    a, b = await replicas("a"), await replicas("b")
    host = next(_HOSTS)
    stray: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
    stray.setsockopt(zmq.LINGER, 0)
    try:
        port = stray.bind_to_random_port(f"tcp://{host}")
        b.transport.set_peers([a.transport.address, f"{host}:{port}"])
        await eventually(lambda: "a" in b.sync.peers, WAIT, message="b hears a")

        garbage = [
            [b"\xc1 not msgpack"],
            [msgpack.packb(["a batch of another kind"])],
            [msgpack.packb([1, "x", "y", 1, 0.0, []]), b"a second frame"],
        ]
        for frames in garbage:
            counted = b.transport.malformed
            # Sent until it arrives: a PUB socket drops what it sends before the subscriber has connected.
            while b.transport.malformed == counted:
                stray.send_multipart(frames)
                await asyncio.sleep(0.05)
        assert b.transport.malformed >= len(garbage)
        assert set(b.sync.peers) == {"a"}  # nothing of the stray's became a peer

        picks = [a.serve(prompt(n)) for n in range(10, 13)]
        await eventually(lambda: b.sync.counters.applied_records >= 6, WAIT, message="b still applies a's batches")
        assert [b.serve(prompt(n)) for n in range(10, 13)] == picks
    finally:
        stray.close()


@CONFIGS
async def test_a_restarted_peer_is_recognised_and_its_predecessors_requests_released(
    replicas: Start, config: str | None
) -> None:
    a, b = await replicas("a", config=config), await replicas("b", config=config)
    await connect(a, b)
    target = a.route(prompt(20)).endpoint.id  # never completed: a dies with it in flight
    await eventually(lambda: b.sync.open_peer_requests == 1, WAIT, message="b charges a's request")
    assert not b.idle(target)

    host, _, port = a.transport.address.rpartition(":")
    await a.transport.stop()
    # The same replica id on the same address, as a pod restarting in place: a new incarnation.
    again = await replicas("a", host=host, port=int(port), config=config)
    again.transport.set_peers([b.transport.address])
    await eventually(
        lambda: b.sync.peers.get("a") is not None and b.sync.open_peer_requests == 0, WAIT, message="b hears the new a"
    )
    assert b.sync.peers["a"].incarnation == again.sync.incarnation != a.sync.incarnation
    assert b.idle(target)


@CONFIGS
async def test_a_silent_peer_expires_and_its_requests_are_released(replicas: Start, config: str | None) -> None:
    a, b = await replicas("a", config=config), await replicas("b", peer_timeout=0.5, config=config)
    await connect(a, b)
    target = a.route(prompt(30)).endpoint.id
    await eventually(lambda: b.sync.open_peer_requests == 1, WAIT, message="b charges a's request")
    assert not b.idle(target)

    await a.transport.stop()
    await eventually(lambda: not b.sync.peers, 10.0, message="b forgets a")
    assert b.sync.open_peer_requests == 0
    assert b.sync.counters.expired_peers == 1
    assert b.idle(target)


async def test_a_peer_no_longer_listed_is_no_longer_heard(replicas: Start) -> None:
    a, b = await replicas("a"), await replicas("b")
    await connect(a, b)
    b.transport.set_peers([])
    assert b.transport.connected == frozenset()
    received = b.sync.counters.received_batches
    a.serve(prompt(40))
    await asyncio.sleep(0.5)
    assert b.sync.counters.received_batches == received

    b.transport.set_peers([a.transport.address])
    assert b.transport.connected == {a.transport.address}
    a.serve(prompt(41))
    await eventually(lambda: b.sync.counters.received_batches > received, WAIT, message="b hears a again")


async def test_the_metrics_follow_the_exchange(replicas: Start) -> None:
    a, b = await replicas("a"), await replicas("b")
    metrics = RouterMetrics()
    metrics.register_fleet(b.transport.stats)
    await connect(a, b)
    a.serve(prompt(50))
    await eventually(lambda: b.sync.counters.applied_records >= 2, WAIT, message="b applies a's request")
    b.serve(prompt(51))
    await asyncio.sleep(0.05)

    text = metrics.render().decode()

    def value(name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert match, name
        return float(match.group(1))

    assert value("kvroute_fleet_peers") == 1
    assert value("kvroute_fleet_peer_addresses") == 2  # a's and its own
    assert value("kvroute_fleet_peer_requests_open") == 0
    assert value("kvroute_fleet_records_applied_total") == b.sync.counters.applied_records >= 2
    assert value("kvroute_fleet_batches_received_total") == b.sync.counters.received_batches >= 1
    assert value("kvroute_fleet_batches_sent_total") == b.sync.counters.sent_batches >= 1
    assert value("kvroute_fleet_sent_bytes_total") == b.transport.bytes_sent > 0
    assert value("kvroute_fleet_batches_malformed_total") == 0


async def test_a_taken_address_fails_the_start(replicas: Start) -> None:
    a = await replicas("a")
    host, _, port = a.transport.address.rpartition(":")
    with pytest.raises(OSError, match=rf"fleet sync cannot listen on {re.escape(host)}:{port}"):
        await replicas("b", host=host, port=int(port))


async def test_workers_exchange_over_ipc_without_a_tcp_port(tmp_path: Path) -> None:
    holder = ConfigHolder.load(REGISTRY, recommended_config_text())
    pool = EndpointPool(ENDPOINTS)
    transports = []
    for i in range(2):
        sync = FleetSync(f"w{i}", lambda: holder.current, pool.by_id)
        peer = f"ipc://{tmp_path / f'fleet-{1 - i}.sock'}"
        settings = FleetSettings(f"w{i}", StaticPeers([peer]), tcp=False, ipc_path=str(tmp_path / f"fleet-{i}.sock"))
        transports.append(FleetTransport(sync, settings))
    try:
        for transport in transports:
            await transport.start()
        assert transports[0].address == f"ipc://{tmp_path / 'fleet-0.sock'}"
        for transport, other in zip(transports, ("w1", "w0"), strict=True):
            await eventually(lambda t=transport, o=other: o in t.sync.peers, WAIT, message=f"{other} heard over IPC")
    finally:
        for transport in transports:
            await transport.stop()
