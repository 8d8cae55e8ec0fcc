from __future__ import annotations

from collections.abc import Sequence

import pytest

from kvroute.router.framework import ApiKind, Endpoint, LLMRequest, SaturationDetector
from kvroute.router.framework.plugins import NoEndpointsError, NoParams
from kvroute.router.requestcontrol.admission import OBJECTIVE_HEADER, Admission, AdmissionRejected

ENDPOINTS = (Endpoint.create("127.0.0.2", 8000), Endpoint.create("127.0.0.3", 8000))
OBJECTIVES = {"batch": -1, "interactive": 10, "standard": 0}


class FixedDetector(SaturationDetector):
    type_name = "fixed-detector"

    def __init__(self, value: float) -> None:
        super().__init__("fixed", NoParams())
        self.value = value
        self.calls: list[tuple[Endpoint, ...]] = []

    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        self.calls.append(tuple(endpoints))
        return self.value


def request(priority: int) -> LLMRequest:
    return LLMRequest(
        request_id="r1", model="m", api=ApiKind.COMPLETIONS, prompt="hi", body={}, headers={}, priority=priority
    )


@pytest.mark.parametrize(
    ("headers", "priority"),
    [
        ({OBJECTIVE_HEADER: "interactive"}, 10),
        ({OBJECTIVE_HEADER: "batch"}, -1),
        ({"X-Gateway-Inference-Objective": " batch "}, -1),
        ({OBJECTIVE_HEADER: "unknown-objective"}, 5),
        ({OBJECTIVE_HEADER: ""}, 5),
        ({}, 5),
    ],
)
def test_priority_comes_from_the_objective_header(headers: dict[str, str], priority: int) -> None:
    admission = Admission(None, OBJECTIVES, default_priority=5)

    assert admission.priority_for(headers) == priority


def test_objective_name_is_reported_even_when_unknown() -> None:
    admission = Admission(None, OBJECTIVES)

    assert admission.objective_for({OBJECTIVE_HEADER: "nightly"}) == "nightly"
    assert admission.objective_for({"other": "x"}) is None


def test_sheddable_request_is_rejected_with_429_when_the_pool_is_saturated() -> None:
    detector = FixedDetector(1.0)
    admission = Admission(detector, OBJECTIVES)

    with pytest.raises(AdmissionRejected) as excinfo:
        admission.admit(request(-1), ENDPOINTS)

    assert excinfo.value.status == 429
    assert "saturated" in excinfo.value.message
    assert detector.calls == [ENDPOINTS]


@pytest.mark.parametrize(("priority", "saturation"), [(-1, 0.99), (0, 1.0), (0, 5.0), (10, 5.0)])
def test_admitted_when_not_sheddable_or_not_saturated(priority: int, saturation: float) -> None:
    admission = Admission(FixedDetector(saturation), OBJECTIVES)

    admission.admit(request(priority), ENDPOINTS)


def test_non_sheddable_requests_do_not_consult_the_detector() -> None:
    detector = FixedDetector(9.0)

    Admission(detector, OBJECTIVES).admit(request(0), ENDPOINTS)

    assert detector.calls == []


def test_without_a_detector_nothing_is_shed() -> None:
    Admission(None, OBJECTIVES).admit(request(-100), ENDPOINTS)


@pytest.mark.parametrize("priority", [-1, 0, 10])
def test_no_candidates_means_no_endpoints_for_every_priority(priority: int) -> None:
    admission = Admission(FixedDetector(0.0), OBJECTIVES)

    with pytest.raises(NoEndpointsError, match="no endpoints available for model 'm'"):
        admission.admit(request(priority), ())


def test_objectives_are_copied_at_construction() -> None:
    objectives = dict(OBJECTIVES)
    admission = Admission(None, objectives)

    objectives["batch"] = 100

    assert admission.priority_for({OBJECTIVE_HEADER: "batch"}) == -1
