"""`single-profile-handler`: run the configuration's one scheduling profile; its pick is the result.

The first `pick` returns that profile, the second nothing. `process_results` makes it the primary profile and
raises `NoEndpointsError` when it picked no endpoint. A configuration with other than exactly one profile is
an error, reported on the first request that reaches the handler.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvroute.router.framework import (
    CycleState,
    LLMRequest,
    ProfileHandler,
    ProfileResult,
    SchedulingProfile,
    SchedulingResult,
)
from kvroute.router.framework.plugins import NoEndpointsError


class SingleProfileHandler(ProfileHandler):
    type_name = "single-profile-handler"

    def pick(
        self,
        state: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulingProfile],
        results: Mapping[str, ProfileResult],
    ) -> dict[str, SchedulingProfile]:
        if results:
            return {}
        if len(profiles) != 1:
            raise ValueError(f"{self.type_name} {self.name!r} needs exactly one profile, got {sorted(profiles)}")
        return dict(profiles)

    def process_results(
        self, state: CycleState, request: LLMRequest, results: Mapping[str, ProfileResult]
    ) -> SchedulingResult:
        if not results:
            raise NoEndpointsError(f"{self.type_name} {self.name!r} ran no profile")
        name, result = next(iter(results.items()))
        if not result.endpoints:
            raise NoEndpointsError(f"profile {name!r} found no endpoint for the request")
        return SchedulingResult(profile_results=dict(results), primary_profile=name)
