import random

from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest, ScoredEndpoint
from kvroute.router.plugins.pickers.round_robin import RoundRobinPicker

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})
A, B, C = (Endpoint.create(f"10.0.0.{n}", 8000) for n in (1, 2, 3))
ORDER = [A, B, C]


def picker(n: int = 1, seed: int = 0) -> RoundRobinPicker:
    params = RoundRobinPicker.Params.model_validate({"maxNumOfEndpoints": n})
    return RoundRobinPicker("rr", params, rng=random.Random(seed))


def test_each_endpoint_in_turn_by_id_whatever_the_scores_and_input_order() -> None:
    p = picker(seed=4)
    inputs = [[(C, 1.0), (A, 0.0), (B, 0.5)], [(B, 0.0), (C, 0.0), (A, 9.0)]]
    picks = [p.pick(CycleState(), REQUEST, [ScoredEndpoint(e, s) for e, s in inputs[i % 2]])[0] for i in range(6)]
    start = ORDER.index(picks[0])
    assert picks == [ORDER[(start + i) % 3] for i in range(6)]


def test_fallbacks_are_the_next_in_rotation() -> None:
    p = picker(2, seed=4)
    scored = [ScoredEndpoint(e, 0.0) for e in ORDER]
    first, second = p.pick(CycleState(), REQUEST, scored), p.pick(CycleState(), REQUEST, scored)
    start = ORDER.index(first[0])
    assert first == [ORDER[start], ORDER[(start + 1) % 3]]
    assert second == [ORDER[(start + 1) % 3], ORDER[(start + 2) % 3]]


def test_start_position_comes_from_the_injected_generator() -> None:
    scored = [ScoredEndpoint(e, 0.0) for e in ORDER]
    starts = {picker(seed=s).pick(CycleState(), REQUEST, scored)[0] for s in range(30)}
    assert starts == set(ORDER)
    assert picker(seed=7).pick(CycleState(), REQUEST, scored) == picker(seed=7).pick(CycleState(), REQUEST, scored)


def test_no_endpoints_no_pick() -> None:
    assert picker().pick(CycleState(), REQUEST, []) == []
