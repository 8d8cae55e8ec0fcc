"""Failure injection: the forcing header and the seeded error rate, in isolation and on a real server."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import pytest

from kvroute.simulator.server.faults import FAILURE_TYPES, FailureInjector


def test_rate_is_the_fraction_of_requests_failed_and_reproducible_from_the_seed() -> None:
    def statuses(seed: int) -> list[int | None]:
        injector = FailureInjector(25, ["rate_limit", "server_error"], random.Random(seed))
        return [error.status if (error := injector.check({})) else None for _ in range(4000)]

    run = statuses(1)
    failed = [s for s in run if s is not None]
    assert 0.22 < len(failed) / len(run) < 0.28
    assert set(failed) == {429, 500}
    assert statuses(1) == run
    assert statuses(2) != run


def test_zero_rate_never_fails_and_the_header_always_wins() -> None:
    injector = FailureInjector(0, [], random.Random(0))
    assert all(injector.check({}) is None for _ in range(1000))
    forced = injector.check({"x-return-error": "503"})
    assert forced is not None
    assert forced.body()["error"] == {
        "message": "Error forced by the x-return-error header.",
        "type": "ServiceUnavailableError",
        "param": None,
        "code": 503,
    }


@pytest.mark.parametrize("value", ["abc", "200", "302", "600", ""])
def test_a_forcing_header_that_is_no_error_status_is_400(value: str) -> None:
    error = FailureInjector(0, [], random.Random(0)).check({"x-return-error": value})
    assert error is not None
    assert (error.status, error.param) == (400, "x-return-error")


def test_unknown_failure_type_or_rate_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown failure types"):
        FailureInjector(10, ["gremlins"], random.Random(0))
    with pytest.raises(ValueError, match="percentage"):
        FailureInjector(101, [], random.Random(0))


@pytest.mark.integration
async def test_rate_100_answers_every_request_with_an_injected_error(sim_fleet: Any) -> None:
    sim = sim_fleet.start("--failure-injection-rate", "100", "--time-scale", "0.05", "--seed", "3")
    known = {status for status, _message in FAILURE_TYPES.values()}
    seen: set[int] = set()
    async with aiohttp.ClientSession() as session:
        for index in range(30):
            path = "/v1/chat/completions" if index % 2 else "/v1/completions"
            body = {"messages": [{"role": "user", "content": "hi"}]} if index % 2 else {"prompt": "hi"}
            async with session.post(f"{sim.base_url}{path}", json=body) as response:
                error = (await response.json())["error"]
                assert response.status in known
                assert error["code"] == response.status
                assert error["message"]
                seen.add(response.status)
        async with session.get(f"{sim.base_url}/metrics") as response:
            assert "vllm:generation_tokens_total" in await response.text()
    assert len(seen) >= 3  # the types are drawn at random


@pytest.mark.integration
async def test_failure_types_restrict_the_injected_errors(sim_fleet: Any) -> None:
    sim = sim_fleet.start("--failure-injection-rate", "100", "--failure-types", "rate_limit", "--time-scale", "0.05")
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.post(f"{sim.base_url}/v1/completions", json={"prompt": "hi"}) as response:
                assert response.status == 429
                assert response.headers["retry-after"] == "1"
                assert (await response.json())["error"]["type"] == "RateLimitError"


@pytest.mark.integration
async def test_header_forces_503_on_an_otherwise_healthy_server(sim_fleet: Any) -> None:
    sim = sim_fleet.start("--time-scale", "0.05")
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{sim.base_url}/v1/completions", json={"prompt": "hi"}, headers={"x-return-error": "503"}
        ) as response:
            assert response.status == 503
            assert response.headers["x-inference-pod"] == sim.pod_name
            assert (await response.json())["error"]["type"] == "ServiceUnavailableError"
        async with session.post(f"{sim.base_url}/v1/completions", json={"prompt": "hi"}) as response:
            assert response.status == 200
