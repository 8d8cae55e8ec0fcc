"""Scheduling results and the runtime form of a scheduling profile."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvroute.router.framework.endpoint import Endpoint

if TYPE_CHECKING:
    from kvroute.router.framework.plugins import Filter, Picker, Scorer


@dataclass(frozen=True, slots=True)
class ScoredEndpoint:
    endpoint: Endpoint
    score: float


@dataclass(frozen=True)
class SchedulingProfile:
    """Filters run in order, then weighted scorers, then the picker."""

    name: str
    filters: tuple[Filter, ...]
    scorers: tuple[tuple[Scorer, float], ...]
    picker: Picker


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """Endpoints picked by one profile, primary first (empty when nothing was eligible)."""

    endpoints: tuple[Endpoint, ...]

    @property
    def primary(self) -> Endpoint | None:
        return self.endpoints[0] if self.endpoints else None


@dataclass(frozen=True)
class SchedulingResult:
    profile_results: dict[str, ProfileResult]
    primary_profile: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The primary profile's endpoints: the target first, then fallbacks."""
        return self.profile_results[self.primary_profile].endpoints
