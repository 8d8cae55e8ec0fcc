"""Router-side accounting of work in flight per endpoint, shared by the load scorers that track it themselves.

A request charges an amount (1 request, N prompt tokens) to one endpoint; the charge is remembered in the
request's `CycleState`, so releasing it is idempotent: the first release subtracts it, later ones do nothing.
That is what lets a hook release early (first output chunk) and again at completion without double counting.

A ledger does not forget endpoints that leave the pool: every charge belongs to a request that is still running
there and is released when it completes, and an endpoint that left only for a moment (a pod failing its readiness
probe under load) comes back with those requests still on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvroute.router.framework import CycleState, Endpoint, FleetShared, LLMRequest, SchedulingResult, StateKey
from kvroute.router.plugins.fleet_values import fields


@dataclass(slots=True)
class _Charge:
    endpoint_id: str
    amount: int
    released: bool = False


class InFlightLedger:
    """Per-endpoint totals of the charges not yet released."""

    def __init__(self, name: str) -> None:
        self._totals: dict[str, int] = {}
        # One key per ledger: two plugin instances must not release each other's charges.
        self.key: StateKey[_Charge] = StateKey(f"{name}/in-flight")

    def total(self, endpoint_id: str) -> int:
        return self._totals.get(endpoint_id, 0)

    def charge(self, state: CycleState, endpoint_id: str, amount: int) -> None:
        """Add `amount` to the endpoint and remember it in `state` (one charge per request and ledger)."""
        self._totals[endpoint_id] = self.total(endpoint_id) + amount
        state.write(self.key, _Charge(endpoint_id, amount))

    def release(self, state: CycleState) -> None:
        """Subtract the request's charge if it has one that is not released yet."""
        charge = state.read(self.key)
        if charge is None or charge.released:
            return
        charge.released = True
        remaining = self.total(charge.endpoint_id) - charge.amount
        if remaining > 0:
            self._totals[charge.endpoint_id] = remaining
        else:
            self._totals.pop(charge.endpoint_id, None)


class LedgerShared(FleetShared):
    """Fleet sync for a plugin whose per-request state is one `InFlightLedger` charge: peers charge the same."""

    _ledger: InFlightLedger

    def share(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> Any:
        charge = state.read(self._ledger.key)
        if charge is None or charge.released:
            return None
        return [charge.endpoint_id, charge.amount]

    def adopt(self, state: CycleState, shared: Any, endpoints: Mapping[str, Endpoint]) -> None:
        endpoint_id, amount = fields(shared, str, int)
        if amount < 0:
            raise ValueError("a negative in-flight charge")
        self._ledger.charge(state, endpoint_id, amount)
