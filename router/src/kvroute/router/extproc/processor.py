"""What the ext_proc exchanges of one front door share: the Director, the response mode, how many endpoints the
destination names, whether the GIE conformance test headers are honoured, the output-token estimate,
and the turn for requests that are passed through unscheduled.

`api_of` says which requests are scheduled: `POST` to a path ending in `/chat/completions` (chat) or
`/completions` (completions), query string ignored; everything else is passed through.
"""

from __future__ import annotations

import itertools
from enum import StrEnum

from kvroute.router.extproc.estimate import OutputEstimator
from kvroute.router.framework import ApiKind, Endpoint
from kvroute.router.requestcontrol.director import Director


class ResponseMode(StrEnum):
    FULL = "full"
    LIGHT = "light"


def api_of(method: str, path: str) -> ApiKind | None:
    """The API a request is scheduled as; None for requests that are only passed through."""
    if method != "POST":
        return None
    path = path.partition("?")[0].rstrip("/")
    if path.endswith("/chat/completions"):
        return ApiKind.CHAT
    if path.endswith("/completions"):
        return ApiKind.COMPLETIONS
    return None


class Processor:
    """`max_destinations` caps the endpoints named in the destination (primary first): Envoy's ORIGINAL_DST
    cluster accepts exactly one. `gie_conformance` honours the conformance suite's test headers."""

    def __init__(
        self,
        director: Director,
        response_mode: ResponseMode = ResponseMode.FULL,
        max_destinations: int = 1,
        *,
        gie_conformance: bool = False,
    ) -> None:
        if max_destinations < 1:
            raise ValueError("max_destinations must be at least 1")
        self.director = director
        self.response_mode = response_mode
        self.max_destinations = max_destinations
        self.gie_conformance = gie_conformance
        self.estimator = OutputEstimator()
        self._turn = itertools.count()

    def next_endpoint(self, subset: frozenset[str] | None) -> Endpoint | None:
        candidates = self.director.candidates(subset)
        return candidates[next(self._turn) % len(candidates)] if candidates else None
