"""The Director's request lifecycle, with the real scheduler and plugins plus a hook that records every call."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import pytest

from kvroute.router.config.builder import Registry
from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.framework import ApiKind, Endpoint, EndpointMetrics
from kvroute.router.observability import RouterMetrics
from kvroute.router.plugins.scorers.active_request import ActiveRequestScorer
from kvroute.router.requestcontrol.body import RequestError
from kvroute.router.requestcontrol.breaker import BreakerSettings
from kvroute.router.requestcontrol.director import Director, Started
from kvroute.router.requestcontrol.handle import RequestHandle

CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: recording-hook
    parameters: {fail: [%(fail)s]}
  - type: active-request-scorer
  - type: max-score-picker
    parameters: {maxNumOfEndpoints: 2}
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: active-request-scorer
      - pluginRef: max-score-picker
admission:
  objectives: {batch: -1, interactive: 10}
"""

SSE_HEADERS = {"content-type": "text/event-stream"}
BODY = json.dumps({"model": "m", "prompt": "hello"}).encode()


def fresh(endpoint: Endpoint, waiting: int = 0) -> Endpoint:
    endpoint.metrics = EndpointMetrics(waiting=waiting, scraped_at=time.monotonic(), stale=False)
    return endpoint


class Setup:
    def __init__(self, registry: Registry, *, fail: str = "", endpoints: int = 2) -> None:
        self.metrics = RouterMetrics()
        self.holder = ConfigHolder.load(registry, CONFIG % {"fail": fail}, metrics=self.metrics)
        self.pool = EndpointPool(fresh(Endpoint.create(f"127.0.0.{i + 2}", 8000)) for i in range(endpoints))
        self.director = Director(self.holder, self.pool, self.metrics, max_body_bytes=4096)

    @property
    def record(self) -> Any:
        return self.holder.current.plugins["recording-hook"].record  # type: ignore[attr-defined]

    def start(self, body: bytes = BODY, headers: dict[str, str] | None = None) -> RequestHandle:
        return self.director.start(ApiKind.COMPLETIONS, body, (headers or {}).items())

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def setup(registry: Registry) -> Setup:
    return Setup(registry)


def test_start_schedules_and_runs_pre_request_hooks(setup: Setup) -> None:
    handle = setup.start(headers={"x-request-id": "req-1"})

    assert handle.request.request_id == "req-1"
    assert len(handle.endpoints) == 2
    assert handle.endpoint is handle.endpoints[0]
    assert setup.record.pre_request == ["req-1"]
    assert handle.config is setup.holder.current
    handle.complete()


def test_client_routing_headers_never_reach_plugins_or_the_upstream(setup: Setup) -> None:
    handle = setup.start(
        headers={
            "X-Gateway-Destination-Endpoint": "10.9.9.9:80",
            "x-gateway-destination-endpoint-served": "10.9.9.9:80",
            "X-Prefiller-Host-Port": "10.9.9.9:81",
            "Authorization": "Bearer t",
        }
    )

    assert dict(handle.request.headers) == {"authorization": "Bearer t"}
    upstream = handle.upstream_headers()
    assert upstream == {"authorization": "Bearer t", "x-request-id": handle.request.request_id}
    assert all(e.id != "10.9.9.9:80" for e in handle.endpoints)
    handle.complete()


def test_a_missing_or_unusable_request_id_is_generated_uniquely(setup: Setup) -> None:
    a = setup.start()
    b = setup.start(headers={"x-request-id": "has space"})

    assert a.request.request_id.startswith("kvr-") and b.request.request_id.startswith("kvr-")
    assert a.request.request_id != b.request.request_id
    a.complete()
    b.complete()


def test_priority_comes_from_the_objective_header(setup: Setup) -> None:
    handle = setup.start(headers={"x-gateway-inference-objective": "interactive"})

    assert (handle.request.priority, handle.request.objective) == (10, "interactive")
    handle.complete()


def test_a_sheddable_request_is_refused_with_429_when_the_pool_is_saturated(setup: Setup) -> None:
    for endpoint in setup.pool.snapshot():
        fresh(endpoint, waiting=50)

    with pytest.raises(RequestError) as caught:
        setup.start(headers={"x-gateway-inference-objective": "batch"})
    standard = setup.start()

    assert (caught.value.status, caught.value.code) == (429, "shed")
    assert caught.value.body()["error"]["type"] == "rate_limit_error"
    assert setup.sample("kvroute_requests_total", api="completions", code="429") == 1
    standard.complete()


def test_an_empty_pool_is_a_503(registry: Registry) -> None:
    setup = Setup(registry, endpoints=0)

    with pytest.raises(RequestError) as caught:
        setup.start()

    assert (caught.value.status, caught.value.code) == (503, "no_endpoints")
    assert setup.record.pre_request == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [(b"{", 400, "invalid_json"), (b'{"prompt": "x"}', 400, "missing_model"), (b" " * 5000, 413, "body_too_large")],
)
def test_bad_requests_are_refused_before_scheduling_and_counted(
    setup: Setup, body: bytes, status: int, code: str
) -> None:
    with pytest.raises(RequestError) as caught:
        setup.start(body)

    assert (caught.value.status, caught.value.code) == (status, code)
    assert setup.record.pre_request == []
    assert setup.sample("kvroute_requests_total", api="completions", code=str(status)) == 1


def test_an_announced_oversized_body_is_refused_before_it_is_read(setup: Setup) -> None:
    setup.director.open(ApiKind.CHAT, 4096)

    with pytest.raises(RequestError) as caught:
        setup.director.open(ApiKind.CHAT, 4097)

    assert caught.value.status == 413
    assert setup.sample("kvroute_requests_total", api="chat", code="413") == 1


def test_a_body_over_the_limit_is_refused_as_it_arrives(setup: Setup) -> None:
    intake = setup.director.open(ApiKind.CHAT)
    intake.add(b"x" * 4000)

    with pytest.raises(RequestError) as caught:
        intake.add(b"x" * 97)

    assert caught.value.status == 413
    assert setup.sample("kvroute_requests_total", api="chat", code="413") == 1


def test_a_client_gone_is_recorded_as_499_and_completes_once(setup: Setup) -> None:
    handle = setup.start(headers={"x-request-id": "gone"})

    handle.on_disconnect()
    handle.complete()

    [completion] = setup.record.completed("gone")
    assert (completion.error, completion.status) == ("client disconnected", 0)
    assert setup.sample("kvroute_requests_total", api="completions", code="499") == 1
    assert setup.sample("kvroute_requests_total", api="completions", code="200") == 0


def test_complete_runs_the_hooks_once_however_often_it_is_called(setup: Setup) -> None:
    handle = setup.start()
    endpoint = handle.endpoints[0]
    handle.on_response_headers(endpoint, 200, {"content-type": "application/json"})

    handle.complete()
    handle.complete("late error")
    handle.complete()

    [completion] = setup.record.completions
    assert (completion.endpoint, completion.error, completion.status) == (endpoint.id, None, 200)
    assert handle.done
    assert setup.sample("kvroute_requests_total", api="completions", code="200") == 1


def test_an_upstream_error_completes_once_with_the_error_and_no_endpoint(setup: Setup) -> None:
    handle = setup.start()
    handle.on_unreachable(handle.endpoints[0], "refused")
    handle.on_forward(handle.endpoints[1])
    handle.on_unreachable(handle.endpoints[1], "refused")

    handle.complete("upstream unreachable", status=502)

    [completion] = setup.record.completions
    assert (completion.endpoint, completion.error) == (None, "upstream unreachable")
    assert setup.sample("kvroute_requests_total", api="completions", code="502") == 1


async def test_a_cancelled_front_door_still_completes_exactly_once(setup: Setup) -> None:
    handle = setup.start()
    started = asyncio.Event()

    async def front_door() -> None:
        try:
            handle.on_response_headers(handle.endpoints[0], 200, SSE_HEADERS)
            started.set()
            await asyncio.sleep(60)
            handle.complete()
        finally:
            handle.complete("client disconnected", status=499)

    task = asyncio.create_task(front_door())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert [c.error for c in setup.record.completions] == ["client disconnected"]
    assert setup.sample("kvroute_requests_total", api="completions", code="499") == 1


def test_a_failing_hook_does_not_keep_the_others_from_completing(registry: Registry) -> None:
    setup = Setup(registry, fail="complete")
    handle = setup.start()
    scorer = setup.holder.current.plugins["active-request-scorer"]
    assert isinstance(scorer, ActiveRequestScorer)
    assert scorer.in_flight(handle.endpoint.id) == 1

    handle.complete()

    assert len(setup.record.completions) == 1
    assert scorer.in_flight(handle.endpoint.id) == 0


def test_a_failing_pre_request_hook_is_a_500_and_releases_what_was_charged(registry: Registry) -> None:
    setup = Setup(registry, fail="pre_request")
    scorer = setup.holder.current.plugins["active-request-scorer"]
    assert isinstance(scorer, ActiveRequestScorer)

    with pytest.raises(RequestError) as caught:
        setup.start(headers={"x-request-id": "r"})

    assert (caught.value.status, caught.value.code) == (500, "pre_request_failed")
    assert [c.error for c in setup.record.completed("r")] == ["pre_request hook failed"]
    assert all(scorer.in_flight(e.id) == 0 for e in setup.pool.snapshot())
    assert setup.sample("kvroute_requests_total", api="completions", code="500") == 1


def test_streamed_tokens_and_usage_reach_the_hooks(setup: Setup) -> None:
    handle = setup.start()
    endpoint = handle.endpoints[0]
    handle.on_response_headers(endpoint, 200, SSE_HEADERS)
    stream = (
        b'data: {"choices":[{"text":"a","finish_reason":null}]}\n\n'
        b'data: {"choices":[{"text":"b","finish_reason":null}]}\n\ndata: {"choi'
    )
    handle.on_response_chunk(endpoint, stream)
    handle.on_response_chunk(endpoint, b'ces":[{"text":"","finish_reason":"length"}]}\n\n')
    usage = {"prompt_tokens": 40, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 30}}
    handle.on_response_chunk(endpoint, b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
    handle.on_response_chunk(endpoint, b"data: [DONE]\n\n")
    handle.complete()

    assert setup.record.chunk_tokens == [2, 0, 1, 0]
    assert setup.record.completions[0].output_tokens == 3
    assert (handle.response.prompt_tokens, handle.response.cached_tokens) == (40, 30)
    assert handle.response.finish_reason == "length"
    assert setup.sample("kvroute_prefix_hit_ratio_sum") == pytest.approx(0.75)


def test_a_json_answer_is_counted_when_complete(setup: Setup) -> None:
    handle = setup.start()
    endpoint = handle.endpoints[0]
    answer = json.dumps({"choices": [{"finish_reason": "stop"}], "usage": {"completion_tokens": 7}}).encode()
    handle.on_response_headers(endpoint, 200, {"content-type": "application/json"})
    handle.on_response_chunk(endpoint, answer[:10])
    handle.on_response_chunk(endpoint, answer[10:])

    assert setup.record.chunk_tokens == [0, 0]
    handle.complete()

    assert setup.record.chunk_tokens == [0, 0, 7]
    assert (handle.response.output_tokens, handle.response.finish_reason) == (7, "stop")


def test_a_json_answer_with_a_length_is_counted_on_its_last_chunk(setup: Setup) -> None:
    handle = setup.start()
    endpoint = handle.endpoints[0]
    answer = json.dumps({"usage": {"completion_tokens": 4}}).encode()
    handle.on_response_headers(endpoint, 200, {"content-type": "application/json", "content-length": str(len(answer))})

    handle.on_response_chunk(endpoint, answer)

    assert setup.record.chunk_tokens == [4]
    handle.complete()
    assert setup.record.chunk_tokens == [4]


def test_the_in_flight_gauge_follows_the_serving_endpoint(setup: Setup) -> None:
    handle = setup.start()
    primary, fallback = handle.endpoints

    def in_flight(endpoint: Endpoint) -> float:
        return setup.sample("kvroute_requests_in_flight", endpoint=endpoint.id)

    assert (in_flight(primary), in_flight(fallback)) == (1, 0)
    handle.on_unreachable(primary, "refused")
    handle.on_forward(fallback)
    assert (in_flight(primary), in_flight(fallback)) == (0, 1)
    handle.on_response_headers(fallback, 200, {})
    handle.complete()
    assert (in_flight(primary), in_flight(fallback)) == (0, 0)
    assert setup.record.completions[0].endpoint == fallback.id


def test_an_unreachable_endpoint_is_skipped_until_it_is_scraped_again(setup: Setup) -> None:
    a, b = setup.pool.snapshot()
    handle = setup.start()
    handle.on_unreachable(a, "refused")
    handle.complete("unreachable", status=502)

    picks = set()
    for _ in range(10):
        h = setup.start()
        picks.update(e.id for e in h.endpoints)
        h.complete()
    assert picks == {b.id}

    a.metrics = replace(a.metrics, scraped_at=time.monotonic() + 1)
    picks = set()
    for _ in range(10):
        h = setup.start()
        picks.update(e.id for e in h.endpoints)
        h.complete()
    assert picks == {a.id, b.id}


def test_when_every_endpoint_is_unreachable_all_stay_candidates(setup: Setup) -> None:
    handle = setup.start()
    for endpoint in setup.pool.snapshot():
        handle.on_unreachable(endpoint, "refused")
    handle.complete("unreachable", status=502)

    again = setup.start()

    assert len(again.endpoints) == 2
    again.complete()


def test_an_unreachable_endpoint_is_tried_again_after_the_cooldown(registry: Registry) -> None:
    setup = Setup(registry)
    setup.director = Director(setup.holder, setup.pool, setup.metrics, breaker=BreakerSettings(open_duration=0.0))
    a = setup.pool.snapshot()[0]
    setup.director.ledger.mark_unreachable(a)

    handle = setup.start()

    assert a in handle.endpoints
    handle.complete()


def test_a_request_keeps_its_configuration_through_a_reload(setup: Setup) -> None:
    handle = setup.start(headers={"x-request-id": "old"})
    old_hook = setup.holder.current.plugins["recording-hook"]

    setup.holder.reload_text((CONFIG % {"fail": ""}).replace("maxNumOfEndpoints: 2", "maxNumOfEndpoints: 1"))
    newer = setup.start(headers={"x-request-id": "new"})
    handle.complete()
    newer.complete()

    assert handle.config is not newer.config
    assert len(newer.endpoints) == 1
    assert [c.request_id for c in old_hook.record.completions] == ["old", "new"]  # type: ignore[attr-defined]


def test_a_plugin_failing_while_scheduling_is_a_500(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    scorer = setup.holder.current.plugins["active-request-scorer"]

    def broken(*args: object) -> dict[str, float]:
        raise ValueError("bug")

    monkeypatch.setattr(scorer, "score", broken)
    with pytest.raises(RequestError) as caught:
        setup.start()

    assert (caught.value.status, caught.value.code) == (500, "scheduling_failed")
    assert setup.record.pre_request == []


PREPARED_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: recording-hook
  - type: stub-preparer
    parameters: {fail: "%(fail)s", delay: %(delay)s}
  - type: active-request-scorer
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: active-request-scorer
"""


async def prepared(started: Started) -> RequestHandle:
    assert not isinstance(started, RequestHandle), "a configuration with a preparer is prepared before scheduling"
    return await started


def prepared_setup(registry: Registry, fail: str = "", delay: float = 0.0) -> Setup:
    setup = Setup(registry)
    setup.holder.reload_text(PREPARED_CONFIG % {"fail": fail, "delay": delay})
    return setup


def test_a_configuration_without_preparers_is_not_preparing(setup: Setup) -> None:
    handle = setup.director.start(ApiKind.COMPLETIONS, BODY, ())
    assert isinstance(handle, RequestHandle)  # scheduled at once, nothing awaited
    assert handle.request.token_ids is None
    handle.complete()


async def test_preparers_run_between_admission_and_scheduling(registry: Registry) -> None:
    setup = prepared_setup(registry)
    preparer = setup.holder.current.plugins["stub-preparer"]

    started = setup.director.start(ApiKind.COMPLETIONS, BODY, {"x-request-id": "p-1"}.items())
    assert not isinstance(started, RequestHandle)
    handle = await started

    assert preparer.prepared == ["p-1"]  # type: ignore[attr-defined]
    assert handle.request.token_ids == [2, len("hello")]  # two candidates
    assert setup.record.pre_request == ["p-1"]
    labels = {"extension_point": "Preparer.prepare", "plugin_type": "stub-preparer", "plugin_name": "stub-preparer"}
    assert setup.sample("kvroute_scheduler_plugin_duration_seconds_count", **labels) == 1
    handle.complete()


async def test_a_bad_request_is_refused_before_preparation(registry: Registry) -> None:
    setup = prepared_setup(registry)

    with pytest.raises(RequestError) as caught:
        await prepared(setup.director.start(ApiKind.COMPLETIONS, b"{", ()))

    assert caught.value.status == 400
    assert setup.holder.current.plugins["stub-preparer"].prepared == []  # type: ignore[attr-defined]
    assert setup.sample("kvroute_requests_total", api="completions", code="400") == 1


@pytest.mark.parametrize("fail", ["failed", "bug"])
async def test_a_failed_preparation_is_counted_and_the_request_scheduled_anyway(registry: Registry, fail: str) -> None:
    setup = prepared_setup(registry, fail=fail)

    handle = await prepared(setup.director.start(ApiKind.COMPLETIONS, BODY, ()))

    assert handle.request.token_ids is None
    assert len(handle.endpoints) >= 1
    labels = {"plugin_type": "stub-preparer", "plugin_name": "stub-preparer"}
    assert setup.sample("kvroute_request_preparation_failures_total", **labels) == 1
    handle.complete()


async def test_a_client_gone_during_preparation_is_recorded_as_499(registry: Registry) -> None:
    setup = prepared_setup(registry, delay=30.0)
    task = asyncio.create_task(prepared(setup.director.start(ApiKind.COMPLETIONS, BODY, ())))
    preparer = setup.holder.current.plugins["stub-preparer"]
    await asyncio.wait_for(preparer.entered.wait(), 10)  # type: ignore[attr-defined]

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert setup.sample("kvroute_requests_total", api="completions", code="499") == 1
    assert setup.record.pre_request == []


def test_with_fleet_sync_peers_count_the_requests_this_director_schedules(registry: Registry) -> None:
    from kvroute.router.fleet.sync import FleetSync

    a, b = Setup(registry), Setup(registry)
    for side, name in ((a, "a"), (b, "b")):
        side.director.ledger.fleet = FleetSync(name, lambda side=side: side.holder.current, side.pool.by_id)
    assert a.director.ledger.fleet is not None and b.director.ledger.fleet is not None
    handle = a.start(headers={"x-request-id": "req-9"})
    b.director.ledger.fleet.receive(a.director.ledger.fleet.take_batch(1.0) or b"", 1.0)
    scorer = b.holder.current.plugins["active-request-scorer"]
    assert isinstance(scorer, ActiveRequestScorer)
    assert scorer.in_flight(handle.endpoint.id) == 1
    handle.complete()
    b.director.ledger.fleet.receive(a.director.ledger.fleet.take_batch(1.1) or b"", 1.1)
    assert scorer.in_flight(handle.endpoint.id) == 0
    assert b.director.ledger.fleet.open_peer_requests == 0


def test_a_scheduled_request_records_its_targets_metrics_age_and_hints_the_scraper(registry: Registry) -> None:
    routed: list[str] = []
    setup = Setup(registry)
    setup.director = Director(setup.holder, setup.pool, setup.metrics, max_body_bytes=4096, routed=routed.append)
    for endpoint in setup.pool.snapshot():
        endpoint.metrics = replace(endpoint.metrics, scraped_at=time.monotonic() - 0.03)  # 30 ms old

    handle = setup.start()
    handle.complete()

    assert handle.endpoint is not None
    assert routed == [handle.endpoint.id]  # the target only, not its fallback
    assert setup.sample("kvroute_endpoint_metrics_age_seconds_count") == 1
    assert setup.sample("kvroute_endpoint_metrics_age_seconds_bucket", le="0.025") == 0
    assert setup.sample("kvroute_endpoint_metrics_age_seconds_bucket", le="0.05") == 1


def test_a_refused_request_hints_nothing(registry: Registry) -> None:
    routed: list[str] = []
    setup = Setup(registry)
    setup.director = Director(setup.holder, setup.pool, setup.metrics, max_body_bytes=4096, routed=routed.append)

    with pytest.raises(RequestError):
        setup.start(body=b"not json")

    assert routed == []
    assert setup.sample("kvroute_endpoint_metrics_age_seconds_count") == 0
