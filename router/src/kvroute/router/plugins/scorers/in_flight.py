"""Router-side accounting of work in flight per endpoint, and the base of the load scorers built on it.

A request charges amounts (1 request, N prompt tokens) to endpoints; each charge is remembered in the request's
`CycleState`, so releasing is idempotent: the first release of a charge subtracts it, later ones do nothing.
That is what lets a hook release early (first output chunk) and again at completion without double counting. A
charge made `until_complete` survives the early releases and goes only with the final one (the primary target's
request in `inflight-load-producer`, which stays in flight after its prefill).

A ledger does not forget endpoints that leave the pool: every charge belongs to a request that is still running
there and is released when it completes, and an endpoint that left only for a moment (a pod failing its readiness
probe under load) comes back with those requests still on it.

`InFlightScorer` is a scorer that keeps one ledger: at `pre_request` it charges the primary target
(`result.endpoints[0]`) what `amount` says, it releases at `on_response_complete` (any outcome) and, when
`releases_at_first_token`, already at the first response chunk carrying output tokens; with fleet sync a peer's
request charges here too (`LedgerShared`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from pydantic import BaseModel

from kvroute.router.framework import (
    CycleState,
    Endpoint,
    FleetShared,
    LLMRequest,
    PreRequest,
    ResponseHook,
    ResponseInfo,
    SchedulingResult,
    Scorer,
    StateKey,
)
from kvroute.router.plugins.fleet_values import fields


@dataclass(slots=True)
class Charge:
    endpoint_id: str
    amount: int
    until_complete: bool = False
    released: bool = False


class InFlightLedger:
    """Per-endpoint totals of the charges not yet released."""

    def __init__(self, name: str, what: str = "in-flight") -> None:
        self._totals: dict[str, int] = {}
        self.totals: Mapping[str, int] = MappingProxyType(self._totals)  # endpoint id -> total (absent: 0)
        # One key per ledger: two plugin instances (or two ledgers of one) must not release each other's charges.
        self.key: StateKey[list[Charge]] = StateKey(f"{name}/{what}")

    def total(self, endpoint_id: str) -> int:
        return self._totals.get(endpoint_id, 0)

    def charges(self, state: CycleState) -> list[Charge]:
        """The request's charges in this ledger, in the order they were made (released ones included)."""
        return state.read(self.key) or []

    def charge(self, state: CycleState, endpoint_id: str, amount: int, *, until_complete: bool = False) -> None:
        """Add `amount` to the endpoint and remember the charge in `state`."""
        self._totals[endpoint_id] = self.total(endpoint_id) + amount
        charges = state.read(self.key)
        if charges is None:
            state.write(self.key, [Charge(endpoint_id, amount, until_complete)])
        else:
            charges.append(Charge(endpoint_id, amount, until_complete))

    def release(self, state: CycleState, *, final: bool = True) -> None:
        """Subtract the request's charges not released yet; `final=False` keeps those made `until_complete`."""
        for charge in state.read(self.key) or ():
            if charge.released or (charge.until_complete and not final):
                continue
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
        charges = self._ledger.charges(state)
        if not charges or charges[0].released:
            return None
        return [charges[0].endpoint_id, charges[0].amount]

    def adopt(self, state: CycleState, shared: Any, endpoints: Mapping[str, Endpoint]) -> None:
        endpoint_id, amount = fields(shared, str, int)
        if amount < 0:
            raise ValueError("a negative in-flight charge")
        self._ledger.charge(state, endpoint_id, amount)


class InFlightScorer(Scorer, PreRequest, ResponseHook, LedgerShared):
    """A scorer over what this router has in flight per endpoint (module docstring)."""

    # True: the charge goes at the first response chunk with output tokens (prefill done), not at completion.
    releases_at_first_token: ClassVar[bool] = False

    def __init__(self, name: str, params: BaseModel) -> None:
        super().__init__(name, params)
        self._ledger = InFlightLedger(name)

    @abstractmethod
    def amount(self, state: CycleState, request: LLMRequest, endpoint_id: str) -> int | None:
        """What the request charges to its primary target `endpoint_id`; None charges nothing."""

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        if not result.endpoints:
            return
        target = result.endpoints[0].id
        amount = self.amount(state, request, target)
        if amount is not None:
            self._ledger.charge(state, target, amount)

    def on_response_chunk(
        self,
        state: CycleState,
        request: LLMRequest,
        endpoint: Endpoint,
        response: ResponseInfo,
        new_tokens: int,
    ) -> None:
        if self.releases_at_first_token and new_tokens > 0:
            self._ledger.release(state)

    def on_response_complete(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint | None, response: ResponseInfo
    ) -> None:
        self._ledger.release(state)
