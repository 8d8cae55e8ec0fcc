"""Data-parallel ranks and hybrid KV-cache groups end to end: the simulator's app (in this process) publishes over
loopback ZMQ, the router's subscriber feeds a real `precise-prefix-cache-scorer`. Hosts 127.0.14.x."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kvroute.router.datalayer.kvevents import KVEventsSubscriber
from kvroute.router.datalayer.metrics_parser import ENGINES, parse_metrics
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.framework import Endpoint
from kvroute.router.plugins.prefix.request_keys import chain_keys, root_key
from kvroute.router.plugins.scorers.precise_prefix_cache import PrecisePrefixCacheScorer
from kvroute.simulator.engine.kv_events import KVCacheGroup
from kvroute.simulator.server.app import build_app
from kvroute.simulator.server.config import ServerConfig
from tests.support import eventually

MODEL = "kvroute-test"
BLOCK = 16  # the default profile's block size
_HOSTS = itertools.cycle(f"127.0.14.{i}" for i in range(1, 250))
_FRESH = itertools.count()


def ports(host: str, count: int) -> int:
    """A port p such that p .. p+count-1 are all free on `host`."""
    while True:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port: int = probe.getsockname()[1]
        try:
            for offset in range(1, count):
                with socket.socket() as other:
                    other.bind((host, port + offset))
        except OSError:
            continue
        return port


class Setup:
    def __init__(self, host: str, port: int, scorer: PrecisePrefixCacheScorer, endpoint: Endpoint) -> None:
        self.base_url = f"http://{host}:{port}"
        self.scorer = scorer
        self.endpoint = endpoint
        self.session = aiohttp.ClientSession()

    async def generate(self, text: str, rank: int | None = None) -> None:
        headers = {} if rank is None else {"X-data-parallel-rank": str(rank)}
        body = {"model": MODEL, "prompt": text, "max_tokens": 1}
        async with self.session.post(f"{self.base_url}/v1/completions", json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            await response.read()

    async def keys(self, text: str) -> list[int]:
        async with self.session.post(f"{self.base_url}/tokenize", json={"model": MODEL, "prompt": text}) as response:
            tokens = (await response.json())["tokens"]
        return chain_keys(tokens, BLOCK, root_key(MODEL), 256)

    def matched(self, keys: list[int]) -> int:
        return self.scorer.index.match(keys, [self.endpoint.id], 0.0).get(self.endpoint.id, 0)

    async def until_indexed(self, rank: int | None = None) -> None:
        """Sends fresh prompts until the router indexes one: ZMQ drops what is sent before the subscription."""

        async def indexed() -> bool:
            text = f"warm-up {next(_FRESH)} " * 20
            await self.generate(text, rank)
            keys = await self.keys(text)
            for _ in range(20):
                if self.matched(keys) == len(keys):
                    return True
                await asyncio.sleep(0.05)
            return False

        await eventually(indexed, 20.0, message=f"events of rank {rank} indexed")

    async def metrics(self) -> str:
        async with self.session.get(f"{self.base_url}/metrics") as response:
            return await response.text()


@pytest.fixture
async def setup() -> AsyncIterator[Callable[..., Any]]:
    stack: list[Callable[[], Any]] = []

    async def start(**config: Any) -> Setup:
        host = next(_HOSTS)
        http_port = ports(host, 1)
        ranks = config.get("data_parallel_size", 1)
        kv_port = ports(host, ranks)
        server = ServerConfig(
            host=host,
            port=http_port,
            model=MODEL,
            time_scale=0.02,
            kv_events_endpoint=f"tcp://{host}:{kv_port}",
            **config,
        )
        runner = web.AppRunner(build_app(server), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        stack.append(runner.cleanup)
        await web.TCPSite(runner, host, http_port).start()
        endpoint = Endpoint.create(host, http_port)
        pool = EndpointPool([endpoint])
        params = PrecisePrefixCacheScorer.Params.model_validate(
            {"kvEvents": {"endpointPort": kv_port, "dataParallelSize": ranks}, "speculativeTTL": 0}
        )
        scorer = PrecisePrefixCacheScorer("precise", params)
        subscriber = KVEventsSubscriber(scorer.kv_events_subscription(), pool, [scorer])
        await subscriber.start()
        stack.append(subscriber.stop)
        result = Setup(host, http_port, scorer, endpoint)
        stack.append(result.session.close)
        return result

    try:
        yield start
    finally:
        for stop in reversed(stack):
            await stop()


async def test_both_data_parallel_ranks_are_received_and_indexed(setup: Callable[..., Any]) -> None:
    sim = await setup(data_parallel_size=2)
    await sim.until_indexed(rank=0)
    await sim.until_indexed(rank=1)  # rank 1 publishes on the port + 1, numbering its messages from 0 too
    geology, botany = "Notes on geology. " * 40, "Notes on botany. " * 40

    await sim.generate(geology, rank=0)
    await sim.generate(botany, rank=1)

    geology_keys, botany_keys = await sim.keys(geology), await sim.keys(botany)
    assert len(geology_keys) >= 10
    await eventually(lambda: sim.matched(geology_keys) == len(geology_keys))  # from rank 0
    await eventually(lambda: sim.matched(botany_keys) == len(botany_keys))  # from rank 1


async def test_data_parallel_metrics_are_one_series_per_engine_and_the_endpoint_sums_them(
    setup: Callable[..., Any],
) -> None:
    sim = await setup(data_parallel_size=2)

    text = await sim.metrics()

    assert 'engine="1"' in text
    parsed = parse_metrics(text, ENGINES["vllm"])
    assert (parsed.waiting, parsed.running, parsed.kv_usage) == (0, 0, 0.0)
    assert (parsed.block_size, parsed.num_gpu_blocks) == (BLOCK, 2 * 27_136)


async def test_a_sliding_window_group_freeing_blocks_keeps_the_full_attention_match(
    setup: Callable[..., Any],
) -> None:
    sim = await setup(kv_cache_groups=(KVCacheGroup("full_attention"), KVCacheGroup("sliding_window", 2 * BLOCK)))
    await sim.until_indexed()
    text = "Notes on astronomy. " * 40

    await sim.generate(text)

    keys = await sim.keys(text)
    # The sliding-window group stores the same hashes and at once removes all but its last two blocks.
    await eventually(lambda: sim.matched(keys) == len(keys))
    assert sim.scorer.block_size_of(sim.endpoint) == BLOCK
