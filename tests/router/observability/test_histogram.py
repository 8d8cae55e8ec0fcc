"""`LoopHistogram` exposes what prometheus_client's `Histogram` would, for the same observations."""

from __future__ import annotations

import random
from collections.abc import Iterator

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from kvroute.router.observability.histogram import LoopHistogram

BUCKETS = (0.000005, 0.00001, 0.0001, 0.001, 0.1)


@pytest.fixture(autouse=True)
def no_created_series() -> Iterator[None]:
    """As the router runs (`kvroute router` turns the `_created` series off)."""
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    yield
    prometheus_client.enable_created_metrics()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("labelled", [False, True], ids=["unlabelled", "labelled"])
def test_the_exposition_is_prometheus_clients(labelled: bool) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    names = ("extension_point", "plugin") if labelled else ()
    fast = LoopHistogram("x_seconds", "Time of x.", names, buckets=BUCKETS, registry=ours)
    reference = Histogram("x_seconds", "Time of x.", names, buckets=BUCKETS, registry=theirs)
    assert generate_latest(ours) == generate_latest(theirs)  # nothing observed yet
    rng = random.Random(7)

    for _ in range(500):
        value = rng.choice([*BUCKETS, 0.0, 1.0, rng.random() / 100])
        if labelled:
            key = rng.choice([("filter", "a"), ("scorer", "b")])
            fast.labels(*key).observe(value)
            reference.labels(*key).observe(value)
        else:
            fast.observe(value)
            reference.observe(value)

    assert generate_latest(ours) == generate_latest(theirs)
    if labelled:
        fast.remove("filter", "a")
        reference.remove("filter", "a")
        assert generate_latest(ours) == generate_latest(theirs)


def test_label_values_must_match_the_label_names() -> None:
    histogram = LoopHistogram("y", "Y.", ("a", "b"), buckets=BUCKETS, registry=CollectorRegistry())

    with pytest.raises(ValueError, match="takes 2 label values, not 1"):
        histogram.labels("only-one")
