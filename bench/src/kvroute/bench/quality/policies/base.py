"""What every policy under test is: the harness's routing function plus its listener callbacks.

`route` is called at each arrival with read-only views of every engine and answers an engine index, or a
`Route` (prefill engine, then decode engine) on a P/D fleet. The `HarnessListener` callbacks tell a policy what
its own router would see of the response: tokens as they stream, completion, the end of a prefill stage. A
policy with `tick_interval` is also called every that many simulated seconds (`on_tick`), which is how the
adapter models a metrics scrape.

`Disaggregated` runs a policy written for one pool of engines on a P/D fleet, the way routers with separate
prefill and decode policies do (SGLang's `--prefill-policy` / `--decode-policy`, Dynamo's prefill and decode
routers): one instance sees only the prefill engines, another only the decode engines, and every request is
disaggregated. The prefill instance sees its request finish when the prefill stage ends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from kvroute.bench.quality.workloads import Fleet
from kvroute.simulator.des.harness import EngineView, HarnessListener, RequestRecord, Route, WorkloadRequest


class Policy(HarnessListener, ABC):
    tick_interval: float | None = None
    needs_kv_events = False  # the engines must record their KV events for this policy (`on_kv_events`)

    @abstractmethod
    def route(self, request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> int | Route:
        """The engine for `request` (an index into `engines`), or a `Route` on a P/D fleet."""

    def extra_metrics(self) -> dict[str, Any]:
        """Metrics of the policy itself, added to the run's (e.g. how well it predicted TTFTs); after the run."""
        return {}


class Disaggregated(Policy):
    def __init__(self, fleet: Fleet, make: Callable[[str], Policy]) -> None:
        self._prefill_indices = fleet.indices("prefill")
        self._decode_indices = fleet.indices("decode")
        self.prefill = make("prefill")
        self.decode = make("decode")
        self._views: tuple[list[EngineView], list[EngineView]] | None = None

    def route(self, request: WorkloadRequest, engines: Sequence[EngineView], now: float) -> Route:
        if self._views is None:
            self._views = (
                [EngineView(local, engines[i].engine) for local, i in enumerate(self._prefill_indices)],
                [EngineView(local, engines[i].engine) for local, i in enumerate(self._decode_indices)],
            )
        prefill_views, decode_views = self._views
        prefill = self._prefill_indices[_index(self.prefill.route(request, prefill_views, now))]
        decode = self._decode_indices[_index(self.decode.route(request, decode_views, now))]
        return Route(decode=decode, prefill=prefill)

    def on_tokens(self, record: RequestRecord, new_tokens: int, now: float) -> None:
        self.decode.on_tokens(record, new_tokens, now)

    def on_finish(self, record: RequestRecord, now: float) -> None:
        self.decode.on_finish(record, now)

    def on_prefill_done(self, record: RequestRecord, now: float) -> None:
        self.prefill.on_finish(record, now)


def _index(answer: int | Route) -> int:
    if isinstance(answer, Route):
        raise TypeError("a pool policy answers an engine index, not a Route")
    return answer
