"""The adaptive scrape interval: fast while the load changes or requests are routed, doubling up to `slowest`."""

from __future__ import annotations

import pytest

from kvroute.router.datalayer.cadence import Cadence

IDLE = (0, 0, 0.0)


def cadence() -> Cadence:
    return Cadence(interval=0.05, slowest=0.4, hold=1.0)


def test_an_unchanged_load_backs_off_by_doubling_up_to_slowest() -> None:
    c = cadence()
    due = c.scraped(started=0.0, now=0.001, load=IDLE)  # the first reading is a change
    intervals = []
    for _ in range(5):
        started = due
        due = c.scraped(started=started, now=started + 0.001, load=IDLE)
        intervals.append(round(due - started, 6))

    assert intervals == [0.1, 0.2, 0.4, 0.4, 0.4]


def test_a_changed_load_comes_back_to_the_interval() -> None:
    c = cadence()
    c.scraped(0.0, 0.001, IDLE)
    c.scraped(0.05, 0.051, IDLE)
    c.scraped(0.15, 0.151, IDLE)  # now at 0.2

    assert c.scraped(0.35, 0.351, (1, 0, 0.1)) == pytest.approx(0.40)


def test_a_failed_scrape_backs_off_like_an_unchanged_one_and_keeps_the_last_load() -> None:
    c = cadence()
    c.scraped(0.0, 0.001, (2, 1, 0.5))

    assert c.scraped(0.05, 0.051, None) == pytest.approx(0.15)
    assert c.scraped(0.15, 0.151, (2, 1, 0.5)) == pytest.approx(0.35)  # same load as before the failure


def test_the_next_scrape_is_never_in_the_past() -> None:
    c = cadence()

    assert c.scraped(0.0, 0.3, IDLE) == 0.3  # the scrape took longer than the interval


def test_a_routed_request_scrapes_a_slowly_polled_endpoint_at_once() -> None:
    c = cadence()
    c.scraped(0.0, 0.001, IDLE)
    c.scraped(0.05, 0.051, IDLE)
    due = c.scraped(0.15, 0.151, IDLE)  # next at 0.35

    assert due == pytest.approx(0.35)
    assert c.routed(now=0.26, started=0.15, due=due) == 0.26  # last scrape 110 ms ago: now


def test_a_routed_request_keeps_a_fast_endpoint_on_its_cadence() -> None:
    c = cadence()
    due = c.scraped(0.0, 0.001, IDLE)  # next at 0.05

    assert c.routed(now=0.02, started=0.0, due=due) == pytest.approx(0.05)  # never more often than the interval


def test_an_endpoint_stays_fast_for_hold_seconds_after_a_routed_request() -> None:
    c = cadence()
    c.scraped(0.0, 0.001, IDLE)
    c.routed(now=0.01, started=0.0, due=0.05)

    intervals = []
    started = 0.05
    for _ in range(25):
        due = c.scraped(started, started + 0.001, IDLE)
        intervals.append(round(due - started, 6))
        started = due

    assert started > 1.01
    assert intervals[:19] == [0.05] * 19  # through 0.05 + 19 * 0.05 = 1.0 s: still fast
    assert intervals[-1] == 0.4  # then backing off


def test_interval_must_not_exceed_slowest() -> None:
    with pytest.raises(ValueError, match="interval"):
        Cadence(interval=0.5, slowest=0.1, hold=1.0)
