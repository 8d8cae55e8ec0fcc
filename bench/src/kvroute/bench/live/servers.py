"""What the simulators themselves counted: the per-server side of a live row, whatever router was in front.

Each `kvroute sim serve` exports vLLM's counters on `/metrics`; read before and after a trace, their
differences give the requests each server finished, the prompt tokens it looked up in and served from its prefix
cache, its preemptions and the tokens it generated. These need nothing from the router's answers, so a router
that forwards no usage or pod header (Dynamo's frontend) is measured the same way as the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, fields

import aiohttp

# Counter families summed over their label sets (vLLM's names, with the `_total` of the exposition).
_FAMILIES = {
    "vllm:request_success_total": "requests",
    "vllm:prefix_cache_queries_total": "prefix_queries",
    "vllm:prefix_cache_hits_total": "prefix_hits",
    "vllm:num_preemptions_total": "preemptions",
    "vllm:generation_tokens_total": "output_tokens",
}


@dataclass(frozen=True)
class ServerCounters:
    requests: float = 0.0
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    preemptions: float = 0.0
    output_tokens: float = 0.0

    def __sub__(self, other: ServerCounters) -> ServerCounters:
        return ServerCounters(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})


def parse_counters(exposition: str) -> ServerCounters:
    """The counters of one Prometheus text exposition (families absent from it count 0)."""
    totals = dict.fromkeys(_FAMILIES.values(), 0.0)
    for line in exposition.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        field = _FAMILIES.get(name)
        if field is not None:
            with contextlib.suppress(ValueError):
                totals[field] += float(line.rsplit(" ", 1)[1])
    return ServerCounters(**totals)


async def read_counters(urls: Sequence[str], timeout: float = 5.0) -> list[ServerCounters]:
    """Every server's counters, in the order of `urls` (`http://host:port` each)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:

        async def one(url: str) -> ServerCounters:
            async with session.get(f"{url}/metrics") as response:
                response.raise_for_status()
                return parse_counters(await response.text())

        return list(await asyncio.gather(*(one(url) for url in urls)))
