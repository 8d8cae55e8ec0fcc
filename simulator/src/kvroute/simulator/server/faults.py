"""Failure injection: answer some inference requests with an error instead of a completion.

Two triggers, checked before a request reaches the engine:
- the `x-return-error: <status>` request header forces that status (400..599) with a JSON error body;
- with `--failure-injection-rate P`, each request fails with probability P/100; the failure type is drawn
  uniformly from the enabled types. Both draws use one seeded `random.Random`, so a run is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from kvroute.simulator.server.errors import APIError

FORCE_ERROR_HEADER = "x-return-error"

# type name -> (status, message)
FAILURE_TYPES: dict[str, tuple[int, str]] = {
    "rate_limit": (429, "Rate limit reached for this model; retry after a short wait."),
    "server_error": (500, "Internal server error."),
    "service_unavailable": (503, "The server is temporarily unable to serve requests."),
    "invalid_request": (400, "Invalid request."),
    "model_not_found": (404, "The requested model does not exist."),
    "context_length": (400, "This model's maximum context length was exceeded by the request."),
}


class FailureInjector:
    def __init__(self, rate_percent: float, types: Sequence[str], rng: random.Random) -> None:
        if not 0 <= rate_percent <= 100:
            raise ValueError("the failure injection rate is a percentage (0..100)")
        unknown = sorted(set(types) - set(FAILURE_TYPES))
        if unknown:
            raise ValueError(f"unknown failure types {unknown}; known: {', '.join(FAILURE_TYPES)}")
        self.rate = rate_percent / 100
        self.types = tuple(types) or tuple(FAILURE_TYPES)
        self._rng = rng

    def check(self, headers: Mapping[str, str]) -> APIError | None:
        """The error to answer instead of serving the request, if any."""
        forced = headers.get(FORCE_ERROR_HEADER)
        if forced is not None:
            return _forced(forced)
        if self.rate and self._rng.random() < self.rate:
            status, message = FAILURE_TYPES[self._rng.choice(self.types)]
            headers_out = {"retry-after": "1"} if status in (429, 503) else None
            return APIError(status, message, headers=headers_out)
        return None


def _forced(value: str) -> APIError:
    try:
        status = int(value.strip())
    except ValueError:
        status = 0
    if not 400 <= status <= 599:
        return APIError(
            400, f"the {FORCE_ERROR_HEADER} header must be an HTTP error status (400..599)", param=FORCE_ERROR_HEADER
        )
    return APIError(status, f"Error forced by the {FORCE_ERROR_HEADER} header.")
