from __future__ import annotations

import pytest

from kvroute.router.datalayer.pool import EndpointPool, PoolChange
from kvroute.router.framework import Endpoint, EndpointMetrics, Role


def ep(address: str, port: int = 8000) -> Endpoint:
    return Endpoint.create(address, port)


def test_snapshot_is_the_given_set_in_order_and_an_immutable_tuple() -> None:
    pool = EndpointPool([ep("127.0.0.3"), ep("127.0.0.2")])

    snapshot = pool.snapshot()

    assert isinstance(snapshot, tuple)
    assert [e.id for e in snapshot] == ["127.0.0.3:8000", "127.0.0.2:8000"]
    assert len(pool) == 2
    assert pool.get("127.0.0.2:8000") is snapshot[1]
    assert pool.get("127.0.0.9:8000") is None


def test_unchanged_endpoints_keep_their_object_and_scraped_metrics() -> None:
    pool = EndpointPool([ep("127.0.0.2"), ep("127.0.0.3")])
    kept = pool.get("127.0.0.2:8000")
    assert kept is not None
    kept.metrics = EndpointMetrics(waiting=7, running=3, kv_usage=0.5, scraped_at=12.0, stale=False)
    old_snapshot = pool.snapshot()

    change = pool.set_endpoints([ep("127.0.0.2"), ep("127.0.0.4")])

    assert pool.get("127.0.0.2:8000") is kept
    assert kept.metrics.waiting == 7
    assert [e.id for e in change.added] == ["127.0.0.4:8000"]
    assert [e.id for e in change.removed] == ["127.0.0.3:8000"]
    assert change.updated == ()
    # a cycle still holding the old snapshot is unaffected
    assert [e.id for e in old_snapshot] == ["127.0.0.2:8000", "127.0.0.3:8000"]
    assert [e.id for e in pool.snapshot()] == ["127.0.0.2:8000", "127.0.0.4:8000"]


def test_relabelled_endpoint_is_replaced_but_carries_its_metrics() -> None:
    pool = EndpointPool([Endpoint.create("127.0.0.2", 8000, labels={"llm-d.ai/role": "decode"})])
    old = pool.snapshot()[0]
    old.metrics = EndpointMetrics(waiting=2, scraped_at=1.0, stale=False)

    change = pool.set_endpoints([Endpoint.create("127.0.0.2", 8000, labels={"llm-d.ai/role": "prefill"})])

    new = pool.snapshot()[0]
    assert old.role is Role.DECODE
    assert new is not old
    assert new.role is Role.PREFILL
    assert new.metrics.waiting == 2
    assert change.updated == (new,)
    assert change.added == ()
    assert change.removed == ()


def test_subscribers_hear_of_changes_after_the_snapshot_is_swapped() -> None:
    pool = EndpointPool([ep("127.0.0.2"), ep("127.0.0.3")])
    seen: list[tuple[PoolChange, tuple[str, ...]]] = []
    unsubscribe = pool.subscribe(lambda change: seen.append((change, tuple(e.id for e in pool.snapshot()))))

    pool.set_endpoints([ep("127.0.0.3")])
    pool.set_endpoints([ep("127.0.0.3")])  # no change: nobody is called
    unsubscribe()
    pool.set_endpoints([])

    assert len(seen) == 1
    change, snapshot_ids = seen[0]
    assert [e.id for e in change.removed] == ["127.0.0.2:8000"]
    assert snapshot_ids == ("127.0.0.3:8000",)


def test_a_failing_subscriber_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    pool = EndpointPool([ep("127.0.0.2")])
    removed: list[str] = []

    def broken(change: PoolChange) -> None:
        raise RuntimeError("boom")

    pool.subscribe(broken)
    pool.subscribe(lambda change: removed.extend(e.id for e in change.removed))

    pool.set_endpoints([])

    assert removed == ["127.0.0.2:8000"]
    assert "subscriber" in caplog.text


def test_a_removed_endpoint_that_comes_back_is_a_new_object_with_stale_metrics() -> None:
    pool = EndpointPool([ep("127.0.0.2")])
    first = pool.snapshot()[0]
    first.metrics = EndpointMetrics(waiting=5, scraped_at=1.0, stale=False)

    pool.set_endpoints([])
    change = pool.set_endpoints([ep("127.0.0.2")])

    assert change.added[0] is not first
    assert change.added[0].metrics.stale


def test_duplicate_ids_are_rejected_and_leave_the_pool_unchanged() -> None:
    pool = EndpointPool([ep("127.0.0.2")])

    with pytest.raises(ValueError, match=r"127\.0\.0\.3:8000 appears twice"):
        pool.set_endpoints([ep("127.0.0.3"), ep("127.0.0.3")])

    assert [e.id for e in pool.snapshot()] == ["127.0.0.2:8000"]
