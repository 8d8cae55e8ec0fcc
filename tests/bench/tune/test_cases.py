from __future__ import annotations

from pathlib import Path

import pytest

from kvroute.bench.quality.generators import build
from kvroute.bench.quality.workloads import TraceSpec
from kvroute.bench.tune.cases import CaseError, Selection, build_cases

TRACE = Path(__file__).resolve().parents[3] / "bench" / "traces" / "sample-plain.jsonl"


def test_fixed_workloads_run_on_training_and_held_out_seeds(tiny_file: Path) -> None:
    train, holdout = build_cases(Selection(workloads=[str(tiny_file)], train_seeds=[0, 1], holdout_seeds=[1000]))

    assert [(c.id, c.seed, c.split) for c in train] == [("tiny@0", 0, "train"), ("tiny@1", 1, "train")]
    assert [(c.id, c.split) for c in holdout] == [("tiny@1000", "holdout")]


def test_cases_are_ordered_seed_by_seed(tiny_file: Path) -> None:
    train, _ = build_cases(Selection(workloads=[str(tiny_file), "multi-turn"], train_seeds=[0, 1], holdout_seeds=[9]))

    assert [c.id for c in train] == ["tiny@0", "multi-turn@0", "tiny@1", "multi-turn@1"]


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (Selection(), "give --workloads and/or --families"),
        (Selection(workloads=["nope"]), "unknown workload 'nope'"),
        (
            Selection(workloads=["multi-turn"], train_seeds=[0, 1], holdout_seeds=[1]),
            "seeds both training and held-out: 1",
        ),
        (Selection(workloads=["multi-turn"], holdout_seeds=[]), "at least one training seed and one held-out seed"),
        (
            Selection(workloads=["multi-turn", "pd"]),
            "tune P/D (prefill_engines > 0) and aggregated workloads separately",
        ),
        (Selection(workloads=["multi-turn"], holdout_fraction=1.0), "--holdout-fraction must be between 0 and 1"),
    ],
)
def test_invalid_selections(selection: Selection, message: str) -> None:
    with pytest.raises(CaseError) as caught:
        build_cases(selection)

    assert message in str(caught.value)


def test_families_draw_other_workloads_for_held_out_seeds() -> None:
    train, holdout = build_cases(Selection(families=["multi-turn"], sample=2, train_seeds=[0], holdout_seeds=[1000]))

    assert [c.id for c in train] == ["multi-turn-s0-0@0", "multi-turn-s0-1@0"]
    assert [c.id for c in holdout] == ["multi-turn-s1000-0@1000", "multi-turn-s1000-1@1000"]
    assert train[0].spec != holdout[0].spec


def test_a_trace_trains_on_its_beginning_and_is_judged_on_its_end() -> None:
    selection = Selection(
        workloads=[str(TRACE)],
        train_seeds=[0],
        holdout_seeds=[5],
        holdout_fraction=0.25,
        fleet="engines=3,profile=tiny",
    )

    train, holdout = build_cases(selection)

    assert [c.id for c in train + holdout] == ["sample-plain-head@0", "sample-plain-tail@5"]
    head, tail = train[0].spec.generator, holdout[0].spec.generator
    assert isinstance(head, TraceSpec) and isinstance(tail, TraceSpec)
    assert head.window is not None and tail.window is not None
    assert head.window[0] == 0.0 and head.window[1] == tail.window[0]
    requests = [len(build(c.spec, c.seed).requests) for c in (train[0], holdout[0])]
    assert sum(requests) == 200  # every line of the trace, in one part or the other
    assert 0.6 < requests[0] / 200 < 0.9  # about three quarters of the duration; arrivals are not uniform
    assert train[0].spec.fleet.engines == 3


def test_an_invalid_fleet_is_named() -> None:
    with pytest.raises(CaseError, match="--fleet: engines: Input should be greater than or equal to 1"):
        build_cases(Selection(workloads=[str(TRACE)], fleet="engines=0"))
