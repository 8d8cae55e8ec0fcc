"""A request body received under the limit; every refusal is a recorded 413."""

from __future__ import annotations

import pytest

from kvroute.router.framework import ApiKind
from kvroute.router.observability import RouterMetrics
from kvroute.router.requestcontrol.body import RequestError
from kvroute.router.requestcontrol.intake import Intake
from kvroute.router.requestcontrol.ledger import Ledger


@pytest.fixture
def metrics() -> RouterMetrics:
    return RouterMetrics()


def refused(metrics: RouterMetrics) -> float:
    return metrics.registry.get_sample_value("kvroute_requests_total", {"api": "chat", "code": "413"}) or 0.0


def test_the_chunks_make_the_body(metrics: RouterMetrics) -> None:
    intake = Intake(ApiKind.CHAT, 10, Ledger(metrics), length=10)

    for chunk in (b"0123", b"", b"456789"):
        intake.add(chunk)

    assert intake.body == b"0123456789"
    assert refused(metrics) == 0


def test_an_announced_length_over_the_limit_is_refused_before_any_byte(metrics: RouterMetrics) -> None:
    with pytest.raises(RequestError) as caught:
        Intake(ApiKind.CHAT, 10, Ledger(metrics), length=11)

    assert (caught.value.status, caught.value.code) == (413, "body_too_large")
    assert caught.value.message == "the request body exceeds 10 bytes"
    assert refused(metrics) == 1


def test_a_body_growing_over_the_limit_is_refused_at_the_chunk_that_crosses_it(metrics: RouterMetrics) -> None:
    intake = Intake(ApiKind.CHAT, 10, Ledger(metrics))
    intake.add(b"x" * 10)

    with pytest.raises(RequestError) as caught:
        intake.add(b"y")

    assert caught.value.status == 413
    assert intake.body == b""  # nothing kept of a refused body
    assert refused(metrics) == 1


def test_a_refusal_the_door_detects_itself_is_recorded_too(metrics: RouterMetrics) -> None:
    error = Intake(ApiKind.CHAT, 10, Ledger(metrics)).refuse()

    assert error.status == 413
    assert refused(metrics) == 1
