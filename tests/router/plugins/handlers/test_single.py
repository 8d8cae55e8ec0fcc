from collections.abc import Sequence

import pytest

from kvroute.router.framework import (
    ApiKind,
    CycleState,
    Endpoint,
    LLMRequest,
    Picker,
    ProfileResult,
    SchedulingProfile,
    ScoredEndpoint,
)
from kvroute.router.framework.plugins import NoEndpointsError, NoParams
from kvroute.router.plugins.handlers.single import SingleProfileHandler

A, B = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2))
REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})


class FirstPicker(Picker):
    type_name = "first-picker"

    def pick(self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]) -> list[Endpoint]:
        return [s.endpoint for s in scored[:1]]


def profile(name: str) -> SchedulingProfile:
    return SchedulingProfile(name, (), (), FirstPicker("first", NoParams()))


HANDLER = SingleProfileHandler("single-profile-handler", NoParams())


def test_runs_its_one_profile_once() -> None:
    profiles = {"default": profile("default")}
    assert HANDLER.pick(CycleState(), REQUEST, profiles, {}) == profiles
    assert HANDLER.pick(CycleState(), REQUEST, profiles, {"default": ProfileResult((A,))}) == {}


def test_the_profile_is_primary() -> None:
    result = HANDLER.process_results(CycleState(), REQUEST, {"default": ProfileResult((A, B))})
    assert result.primary_profile == "default"
    assert result.endpoints == (A, B)
    assert result.headers == {}


def test_no_endpoint_is_an_error() -> None:
    with pytest.raises(NoEndpointsError, match="'default' found no endpoint"):
        HANDLER.process_results(CycleState(), REQUEST, {"default": ProfileResult(())})


def test_more_than_one_profile_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match=r"exactly one profile, got \['a', 'b'\]"):
        HANDLER.pick(CycleState(), REQUEST, {"a": profile("a"), "b": profile("b")}, {})
