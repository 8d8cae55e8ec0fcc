import pydantic
import pytest

from kvroute.router.framework import ApiKind, CycleState, Endpoint, EndpointMetrics, LLMRequest
from kvroute.router.plugins.saturation.utilization import UtilizationDetector

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})
NOW = 1000.0


def endpoint(n: int, waiting: int = 0, kv: float = 0.0, age: float = 0.0, stale: bool = False) -> Endpoint:
    e = Endpoint.create(f"10.0.0.{n}", 8000)
    e.metrics = EndpointMetrics(waiting=waiting, kv_usage=kv, scraped_at=NOW - age, stale=stale)
    return e


def detector(params: dict[str, object] | None = None) -> UtilizationDetector:
    return UtilizationDetector("sat", UtilizationDetector.Params.model_validate(params or {}), clock=lambda: NOW)


def test_saturation_is_the_mean_of_the_worse_of_queue_and_kv_ratios() -> None:
    # Q = 5, KV = 0.8: max(0/5, 0.2/0.8) = 0.25 and max(10/5, 0.4/0.8) = 2.0 -> mean 1.125
    assert detector().saturation([endpoint(1, 0, 0.2), endpoint(2, 10, 0.4)]) == pytest.approx(1.125)
    # max(1/5, 0.4/0.8) = 0.5 and max(3/5, 0.0) = 0.6 -> mean 0.55, not saturated
    assert detector().saturation([endpoint(1, 1, 0.4), endpoint(2, 3, 0.0)]) == pytest.approx(0.55)


def test_stale_metrics_count_as_full() -> None:
    marked = endpoint(1, 0, 0.0, stale=True)
    too_old = endpoint(2, 0, 0.0, age=0.25)  # older than the default 200ms
    fresh = endpoint(3, 0, 0.0, age=0.15)
    assert detector().saturation([marked, too_old, fresh]) == pytest.approx(2 / 3)


def test_no_endpoints_is_saturated() -> None:
    assert detector().saturation([]) == 1.0


def test_thresholds_are_configurable() -> None:
    d = detector({"queueDepthThreshold": 10, "kvCacheUtilThreshold": 0.5, "metricsStalenessThreshold": "1s"})
    # max(5/10, 0.2/0.5) = 0.5 and max(0/10, 0.45/0.5) = 0.9; age 0.5s is fresh under 1s -> mean 0.7
    assert d.saturation([endpoint(1, 5, 0.2, age=0.5), endpoint(2, 0, 0.45)]) == pytest.approx(0.7)


def test_filter_drops_overloaded_and_stale_endpoints() -> None:
    ok = endpoint(1, waiting=4, kv=0.79)
    queue_full = endpoint(2, waiting=5)
    kv_full = endpoint(3, kv=0.8)
    stale = endpoint(4, stale=True)
    old = endpoint(5, age=0.3)
    assert detector().filter(CycleState(), REQUEST, [ok, queue_full, kv_full, stale, old]) == [ok]


def test_headroom_raises_the_filter_limits() -> None:
    # Q x 1.5 = 7.5 and KV x 1.5 = 1.2
    candidates = [endpoint(1, waiting=7, kv=0.9), endpoint(2, waiting=8), endpoint(3, waiting=0, kv=0.1)]
    assert detector({"headroom": 0.5}).filter(CycleState(), REQUEST, candidates) == [candidates[0], candidates[2]]


def test_filter_keeps_everything_rather_than_nothing() -> None:
    overloaded = [endpoint(1, waiting=50), endpoint(2, kv=0.95)]
    assert detector().filter(CycleState(), REQUEST, overloaded) == overloaded


def staleness(value: object) -> float:
    return UtilizationDetector.Params.model_validate({"metricsStalenessThreshold": value}).metrics_staleness_threshold


def test_staleness_accepts_a_go_duration_or_seconds() -> None:
    assert UtilizationDetector.Params().metrics_staleness_threshold == pytest.approx(0.2)
    assert staleness("1m30s") == pytest.approx(90.0)
    assert staleness("1.5s") == pytest.approx(1.5)
    assert staleness(0.5) == 0.5
    assert staleness(2) == 2.0


@pytest.mark.parametrize("bad", ["0", "soon", "5", "-1s", 0, -0.5, True])
def test_staleness_must_be_a_positive_duration(bad: object) -> None:
    with pytest.raises(pydantic.ValidationError):
        staleness(bad)


def test_threshold_bounds() -> None:
    for bad in ({"queueDepthThreshold": 0}, {"kvCacheUtilThreshold": 1.5}, {"headroom": -0.1}, {"unknown": 1}):
        with pytest.raises(pydantic.ValidationError):
            UtilizationDetector.Params.model_validate(bad)
