"""`precise-prefix-cache-scorer` in a real `kvroute router --mode proxy` fed by the KV events of real
`kvroute sim serve` processes, in both delivery modes. Simulators listen on 127.0.13.x, their publishers on the
same addresses; everything is stopped by PID."""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from tests.support import eventually

pytestmark = pytest.mark.integration

MODEL = "kvroute-test"
SIM_ARGS = ("--model", MODEL, "--time-scale", "0.05")
BLOCK = 16  # the simulator profile's block size: 16 tokens, 64 characters with its four-character tokens
_HOSTS = itertools.cycle(f"127.0.13.{i}" for i in range(1, 250))
_FRESH = itertools.count()
WAIT = 20.0  # a loaded machine gets a wide margin

CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: precise-prefix-cache-scorer
    parameters: {kvEvents: %(kv_events)s, speculativeTTL: 0, tokenizer: %(tokenizer)s}
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: precise-prefix-cache-scorer, weight: 1}
      - {pluginRef: max-score-picker}
"""


def port_free_on(hosts: list[str]) -> int:
    """A port that no socket holds on any of `hosts`."""
    while True:
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port: int = probe.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port


def write_config(tmp_path: Path, kv_events: str, tokenizer: str = "estimate") -> Path:
    path = tmp_path / "precise.yaml"
    path.write_text(CONFIG % {"kv_events": kv_events, "tokenizer": tokenizer})
    return path


def prompt(topic: str) -> str:
    """About 200 four-character tokens: 12 full blocks."""
    return f"[{topic}] " + f"Notes on {topic}, kept for the record. " * 20


async def pod_of(session: aiohttp.ClientSession, base_url: str, text: str) -> str:
    body = {"model": MODEL, "prompt": text, "max_tokens": 1}
    async with session.post(f"{base_url}/v1/completions", json=body) as response:
        assert response.status == 200, await response.text()
        await response.read()
        return response.headers["x-inference-pod"]


async def chat_pod(session: aiohttp.ClientSession, base_url: str, messages: list[dict[str, str]]) -> str:
    body = {"model": MODEL, "messages": messages, "max_tokens": 1}
    async with session.post(f"{base_url}/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        await response.read()
        return response.headers["x-inference-pod"]


async def metric(session: aiohttp.ClientSession, router: Any, name: str) -> float:
    """The sum of the samples named `name` on the router's /metrics (0 when there is none)."""
    async with session.get(f"{router.base_url}/metrics") as response:
        text = await response.text()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


async def index_size(session: aiohttp.ClientSession, router: Any) -> float:
    return await metric(session, router, "kvroute_kv_index_entries")


async def events_flow(session: aiohttp.ClientSession, router: Any, sims: list[Any]) -> None:
    """Sends each simulator, in turn, fresh prompts directly until the router indexes what it publishes: ZMQ
    drops what a publisher sends before the router's subscription has reached it."""
    for sim in sims:

        async def indexed(sim: Any = sim) -> bool:
            before = await index_size(session, router)
            await pod_of(session, sim.base_url, f"warm-up {next(_FRESH)} " * 50)
            for _ in range(20):
                if await index_size(session, router) > before:
                    return True
                await asyncio.sleep(0.05)
            return False

        await eventually(indexed, WAIT)


async def test_per_endpoint_mode_routes_to_the_engine_that_cached_the_prompt(
    sim_fleet: Any, routers: Callable[..., Any], tmp_path: Path
) -> None:
    hosts = [next(_HOSTS) for _ in range(3)]
    kv_port = port_free_on(hosts)
    sims = [sim_fleet.start(*SIM_ARGS, "--kv-events-endpoint", f"tcp://{h}:{kv_port}", host=h) for h in hosts]
    config = write_config(tmp_path, f"{{endpointPort: {kv_port}}}")
    router = routers(",".join(f"{s.host}:{s.port}" for s in sims), config=config)

    async with aiohttp.ClientSession() as session:
        # ZMQ drops what is published before the router's connection is up: wait until events flow.
        await events_flow(session, router, sims)
        held = await index_size(session, router)
        topics = ["geology", "astronomy", "botany"]
        for sim, topic in zip(sims, topics, strict=True):
            assert await pod_of(session, sim.base_url, prompt(topic)) == sim.pod_name  # straight to the engine
        await eventually(lambda: more_than(session, router, held + 3 * 11), WAIT)

        routed = [[await pod_of(session, router.base_url, prompt(t)) for _ in range(2)] for t in topics]

    assert routed == [[sim.pod_name] * 2 for sim in sims]


async def more_than(session: aiohttp.ClientSession, router: Any, entries: float) -> bool:
    return await index_size(session, router) > entries


async def test_central_mode_with_map_format_events_and_a_sequence_gap(
    sim_fleet: Any, routers: Callable[..., Any], tmp_path: Path
) -> None:
    bind_host = next(_HOSTS)
    bind = f"tcp://{bind_host}:{port_free_on([bind_host])}"
    connect = ("--kv-events-endpoint", bind, "--kv-events-connect")
    sims = [
        sim_fleet.start(*SIM_ARGS, *connect, host=next(_HOSTS)),
        sim_fleet.start(*SIM_ARGS, *connect, "--kv-events-map-format", host=next(_HOSTS)),
        sim_fleet.start(*SIM_ARGS, *connect, host=next(_HOSTS)),
    ]
    router = routers(",".join(f"{s.host}:{s.port}" for s in sims), config=write_config(tmp_path, f'{{bind: "{bind}"}}'))

    async with aiohttp.ClientSession() as session:
        await events_flow(session, router, sims)
        held = await index_size(session, router)
        for sim, topic in zip(sims, ["rivers", "glaciers", "deltas"], strict=True):
            await pod_of(session, sim.base_url, prompt(topic))
        await eventually(lambda: more_than(session, router, held + 3 * 11), WAIT)
        routed = [await pod_of(session, router.base_url, prompt(t)) for t in ["rivers", "glaciers", "deltas"]]
        assert routed == [sim.pod_name for sim in sims]

        # A publisher of its own under the first simulator's topic skips sequence numbers.
        publisher = zmq.Context.instance().socket(zmq.PUB)
        publisher.setsockopt(zmq.LINGER, 0)
        publisher.connect(bind)
        try:
            topic = f"kv@{sims[0].host}:{sims[0].port}@{MODEL}-probe".encode()
            sequence = itertools.count(1_000_000, 5)  # every message 5 ahead of the previous: a gap each time

            async def gaps_seen() -> bool:
                payload = msgpack.packb([0.0, [], 0])
                publisher.send_multipart([topic, struct.pack(">Q", next(sequence)), payload])
                return await metric(session, router, "kvroute_kv_events_sequence_gaps_total") >= 2

            await eventually(gaps_seen, WAIT)
        finally:
            publisher.close(linger=0)
        assert await metric(session, router, "kvroute_kv_events_malformed_messages_total") == 0
        # The gaps cost nothing of what was indexed: the prompts still go where they are cached.
        assert await pod_of(session, router.base_url, prompt("rivers")) == sims[0].pod_name


async def test_a_restarted_publisher_loses_its_entries(
    sim_fleet: Any, routers: Callable[..., Any], tmp_path: Path
) -> None:
    hosts = [next(_HOSTS) for _ in range(2)]
    kv_port = port_free_on(hosts)
    args = [(*SIM_ARGS, "--kv-events-endpoint", f"tcp://{h}:{kv_port}") for h in hosts]
    sims = [sim_fleet.start(*a, host=h) for a, h in zip(args, hosts, strict=True)]
    router = routers(
        ",".join(f"{s.host}:{s.port}" for s in sims), config=write_config(tmp_path, f"{{endpointPort: {kv_port}}}")
    )
    restarted = sims[1]

    # No kept-alive connections: the one to the simulator that restarts would be dead.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        await events_flow(session, router, sims)
        for _ in range(6):  # more messages, so the new publisher's numbers stay behind the old one's for a while
            await events_flow(session, router, [restarted])
        held = await index_size(session, router)
        await pod_of(session, restarted.base_url, prompt("volcanoes"))
        await eventually(lambda: more_than(session, router, held + 11), WAIT)
        assert await pod_of(session, router.base_url, prompt("volcanoes")) == restarted.pod_name
        before = await index_size(session, router)

        sim_fleet.processes.remove(restarted)
        restarted.stop()
        replacement = sim_fleet.start(*args[1], host=restarted.host, port=restarted.port)

        async def restart_seen() -> bool:
            await pod_of(session, replacement.base_url, f"after the restart {next(_FRESH)} " * 30)
            return await metric(session, router, "kvroute_kv_events_publisher_restarts_total") >= 1

        await eventually(restart_seen, WAIT)
        after = await index_size(session, router)
        # Cached now only on the other engine: a stale "volcanoes" entry of the restarted one would tie with it.
        await pod_of(session, sims[0].base_url, prompt("volcanoes"))
        await eventually(lambda: more_than(session, router, after + 11), WAIT)
        routed = [await pod_of(session, router.base_url, prompt("volcanoes")) for _ in range(3)]
        restarts = await metric(session, router, "kvroute_kv_events_publisher_restarts_total")

    # The restarted engine's 60-odd entries were dropped: what is left is the other engine's warm-up and the
    # first prompt the new engine published.
    assert after < before / 2, (before, after)
    assert routed == [sims[0].pod_name] * 3
    assert restarts == 1


async def test_the_engine_tokenizer_asks_the_simulators_to_tokenize_chats(
    sim_fleet: Any, routers: Callable[..., Any], tmp_path: Path
) -> None:
    hosts = [next(_HOSTS) for _ in range(3)]
    kv_port = port_free_on(hosts)
    sims = [sim_fleet.start(*SIM_ARGS, "--kv-events-endpoint", f"tcp://{h}:{kv_port}", host=h) for h in hosts]
    config = write_config(tmp_path, f"{{endpointPort: {kv_port}}}", tokenizer="engine")
    router = routers(",".join(f"{s.host}:{s.port}" for s in sims), config=config)
    conversations = [
        [{"role": "system", "content": f"You answer questions about {topic}. " * 12}, {"role": "user", "content": "Hi"}]
        for topic in ("tides", "dunes", "reefs")
    ]

    async with aiohttp.ClientSession() as session:
        await events_flow(session, router, sims)
        held = await index_size(session, router)
        for sim, messages in zip(sims, conversations, strict=True):
            assert await chat_pod(session, sim.base_url, messages) == sim.pod_name
        await eventually(lambda: more_than(session, router, held + 3 * 5), WAIT)

        routed = [await chat_pod(session, router.base_url, messages) for messages in conversations]
        failures = await metric(session, router, "kvroute_request_preparation_failures_total")

    assert routed == [sim.pod_name for sim in sims]
    assert failures == 0
