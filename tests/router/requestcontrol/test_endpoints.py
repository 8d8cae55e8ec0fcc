"""Endpoints leaving the pool reach the plugins of the configuration in force and the per-endpoint metrics."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from kvroute.router.config.builder import Registry
from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.framework import ApiKind, CycleState, Endpoint, EndpointMetrics, EndpointObserver, LLMRequest
from kvroute.router.observability import RouterMetrics
from kvroute.router.plugins.scorers.active_request import ActiveRequestScorer
from kvroute.router.plugins.scorers.prefix_cache import PrefixCacheScorer
from kvroute.router.requestcontrol.body import parse_body
from kvroute.router.requestcontrol.director import Director
from kvroute.router.requestcontrol.endpoints import forget_removed_endpoints
from kvroute.router.requestcontrol.handle import RequestHandle
from kvroute.router.runtime import RouterCore

CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: recording-hook
  - type: recording-observer
    parameters: {fail: %(fail)s}
  - type: prefix-cache-scorer
  - type: no-hit-lru-scorer
  - type: active-request-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: prefix-cache-scorer
        weight: 3
      - pluginRef: no-hit-lru-scorer
      - pluginRef: active-request-scorer
      - pluginRef: max-score-picker
"""
BODY = json.dumps({"model": "m", "prompt": "a prompt long enough to fill a few hashed blocks " * 8}).encode()


class RecordingObserver(EndpointObserver):
    type_name = "recording-observer"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        fail: bool = False

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self.fail = params.fail
        self.removed: list[list[str]] = []

    def on_endpoints_removed(self, endpoint_ids: Sequence[str]) -> None:
        self.removed.append(list(endpoint_ids))
        if self.fail:
            raise RuntimeError("failed on purpose")


def fresh(endpoint: Endpoint) -> Endpoint:
    endpoint.metrics = EndpointMetrics(scraped_at=time.monotonic(), stale=False)
    return endpoint


A, B, C = (Endpoint.create(f"127.0.0.{n}", 8000) for n in (2, 3, 4))


class Setup:
    def __init__(self, registry: Registry, *, fail: bool = False) -> None:
        self.registry = {**registry, RecordingObserver.type_name: RecordingObserver}
        self.metrics = RouterMetrics()
        self.holder = ConfigHolder.load(self.registry, self.config(fail), metrics=self.metrics)
        self.pool = EndpointPool(fresh(Endpoint.create(e.address, e.port)) for e in (A, B, C))
        self.director = Director(self.holder, self.pool, self.metrics)
        self.unsubscribe = forget_removed_endpoints(self.pool, self.holder, self.metrics)

    @staticmethod
    def config(fail: bool) -> str:
        return CONFIG % {"fail": str(fail).lower()}

    def plugin(self, name: str) -> Any:
        return self.holder.current.plugins[name]

    def start(self) -> RequestHandle:
        return self.director.start(ApiKind.COMPLETIONS, BODY, ())

    def keep(self, *endpoints: Endpoint) -> None:
        self.pool.set_endpoints(fresh(Endpoint.create(e.address, e.port)) for e in endpoints)

    def prefix_score(self, endpoint: Endpoint) -> float:
        """The prefix scorer's score for the test's prompt (without sending a request, which would record it)."""
        scorer: PrefixCacheScorer = self.plugin("prefix-cache-scorer")
        prompt = parse_body(BODY, ApiKind.COMPLETIONS, len(BODY)).prompt
        request = LLMRequest(request_id="probe", model="m", api=ApiKind.COMPLETIONS, prompt=prompt, body={}, headers={})
        return scorer.score(CycleState(), request, [endpoint])[endpoint.id]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def setup(registry: Registry) -> Setup:
    return Setup(registry)


def test_removed_endpoints_are_forgotten_by_plugins_and_metrics(setup: Setup) -> None:
    handle = setup.start()
    served = handle.endpoint
    handle.complete()
    assert setup.prefix_score(served) == 1.0
    assert setup.sample("kvroute_scheduler_decisions_total", endpoint=served.id, profile="default") == 1
    others = [e for e in (A, B, C) if e.id != served.id]

    setup.keep(*others)

    assert setup.plugin("recording-observer").removed == [[served.id]]
    assert setup.sample("kvroute_scheduler_decisions_total", endpoint=served.id, profile="default") is None
    assert setup.sample("kvroute_requests_in_flight", endpoint=served.id) is None
    setup.keep(A, B, C)  # the same id comes back: a new endpoint, with nothing cached as far as the router knows
    assert setup.prefix_score(served) == 0.0


def test_additions_and_relabels_are_not_removals(setup: Setup) -> None:
    setup.keep(A, B)
    setup.pool.set_endpoints([*setup.pool.snapshot(), fresh(C)])
    setup.pool.set_endpoints([Endpoint.create(A.address, A.port, labels={"llm-d.ai/role": "decode"}), B, C])

    assert setup.plugin("recording-observer").removed == [[C.id]]


def test_the_configuration_in_force_is_told(setup: Setup) -> None:
    before = setup.plugin("recording-observer")
    setup.holder.reload_text(setup.config(fail=False).replace("{fail: false}", "{fail: false}\n    name: observer-2"))

    setup.keep(A, B)

    assert setup.plugin("observer-2").removed == [[C.id]]
    assert before.removed == []


def test_a_failing_observer_is_logged_and_the_others_still_forget(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    setup = Setup(registry, fail=True)
    handle = setup.start()
    served = handle.endpoint
    handle.complete()

    with caplog.at_level(logging.ERROR):
        setup.keep(*(e for e in (A, B, C) if e.id != served.id))

    assert "plugin 'recording-observer' failed to forget removed endpoints" in caplog.text
    setup.keep(A, B, C)
    assert setup.prefix_score(served) == 0.0
    assert setup.sample("kvroute_scheduler_decisions_total", endpoint=served.id, profile="default") is None


def test_a_request_still_running_on_a_removed_endpoint_completes_exactly_once(setup: Setup) -> None:
    first = setup.start()
    served = first.endpoint
    active: ActiveRequestScorer = setup.plugin("active-request-scorer")
    setup.keep(*(e for e in (A, B, C) if e.id != served.id))
    setup.keep(A, B, C)  # back under the same id while the first request still runs there
    second = setup.director.start(ApiKind.COMPLETIONS, BODY, (), subset={served.id})
    assert second.endpoint.id == served.id
    assert active.in_flight(served.id) == 2  # the first request still runs on the pod

    first.on_response_headers(served, 200, {})
    first.complete()
    first.complete()

    assert active.in_flight(served.id) == 1
    assert setup.sample("kvroute_requests_in_flight", endpoint=served.id) == 1  # never below zero
    second.complete()
    assert active.in_flight(served.id) == 0
    assert setup.sample("kvroute_requests_in_flight", endpoint=served.id) == 0
    record = setup.plugin("recording-hook").record
    assert [len(record.completed(h.request.request_id)) for h in (first, second)] == [1, 1]


def test_unsubscribing_stops_the_forgetting(setup: Setup) -> None:
    setup.unsubscribe()

    setup.keep(A, B)

    assert setup.plugin("recording-observer").removed == []


def test_the_router_core_forgets_removed_endpoints(registry: Registry) -> None:
    observers = {**registry, RecordingObserver.type_name: RecordingObserver}
    core = RouterCore([A, B, C], observers, config_text=Setup.config(fail=False))

    core.pool.set_endpoints([A, B])

    assert core.holder.current.plugins["recording-observer"].removed == [[C.id]]  # type: ignore[attr-defined]
