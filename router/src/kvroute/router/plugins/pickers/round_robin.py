"""`round-robin-picker`: endpoints in turn, ignoring scores (a baseline).

The scored endpoints are ordered by id, so the rotation does not depend on the order filters left them in. A
cursor advances by one per pick; the target is endpoint `cursor mod n` and the fallbacks are the next
`maxNumOfEndpoints - 1` (default 1 in total) in rotation order. The cursor starts at a position drawn from the
injected `random.Random`, so router replicas started together do not all send their first requests to the same
endpoint. When the pool changes size the rotation continues from the same cursor over the new list.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from kvroute.router.framework import Endpoint, ScoredEndpoint
from kvroute.router.plugins.pickers.top_n import TopNParams, TopNPicker


class RoundRobinPicker(TopNPicker):
    type_name = "round-robin-picker"

    def __init__(self, name: str, params: TopNParams | None = None, *, rng: random.Random | None = None) -> None:
        super().__init__(name, params, rng=rng)
        self._cursor = self.rng.randrange(1 << 16)

    def choose(self, scored: Sequence[ScoredEndpoint], n: int) -> list[Endpoint]:
        if not scored:
            return []
        ordered = sorted((s.endpoint for s in scored), key=lambda e: e.id)
        start = self._cursor % len(ordered)
        self._cursor += 1
        rotated = ordered[start:] + ordered[:start]
        return rotated[:n]
