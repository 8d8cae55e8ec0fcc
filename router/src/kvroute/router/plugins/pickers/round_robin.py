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

from pydantic import BaseModel, ConfigDict, Field

from kvroute.router.framework import CycleState, Endpoint, LLMRequest, Picker, ScoredEndpoint


class RoundRobinPicker(Picker):
    type_name = "round-robin-picker"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

        max_num_of_endpoints: int = Field(default=1, ge=1, alias="maxNumOfEndpoints")

    def __init__(self, name: str, params: Params | None = None, *, rng: random.Random | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._n = params.max_num_of_endpoints
        self._cursor = (rng or random.Random()).randrange(1 << 16)

    def pick(self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        if not scored:
            return []
        ordered = sorted((s.endpoint for s in scored), key=lambda e: e.id)
        start = self._cursor % len(ordered)
        self._cursor += 1
        rotated = ordered[start:] + ordered[:start]
        return rotated[: self._n]
