from kvroute.router.framework import CycleState
from kvroute.router.plugins.scorers.in_flight import InFlightLedger


def test_charges_add_up_per_endpoint_and_each_releases_once() -> None:
    ledger = InFlightLedger("l")
    first, second, third = CycleState(), CycleState(), CycleState()
    ledger.charge(first, "a", 3)
    ledger.charge(second, "a", 5)
    ledger.charge(third, "b", 2)
    assert (ledger.total("a"), ledger.total("b"), ledger.total("c")) == (8, 2, 0)
    ledger.release(first)
    ledger.release(first)
    assert ledger.total("a") == 5
    ledger.release(second)
    ledger.release(third)
    assert (ledger.total("a"), ledger.total("b")) == (0, 0)


def test_release_without_a_charge_does_nothing() -> None:
    ledger = InFlightLedger("l")
    ledger.charge(CycleState(), "a", 1)
    ledger.release(CycleState())
    assert ledger.total("a") == 1


def test_ledgers_do_not_share_charges() -> None:
    one, two = InFlightLedger("one"), InFlightLedger("two")
    state = CycleState()
    one.charge(state, "a", 1)
    two.release(state)
    assert one.total("a") == 1
