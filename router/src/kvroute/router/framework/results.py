"""Scheduling results and the runtime form of a scheduling profile."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from kvroute.router.framework.endpoint import Endpoint

if TYPE_CHECKING:
    from kvroute.router.framework.plugins import Filter, Picker, Scorer


@dataclass(frozen=True, slots=True)
class ScoredEndpoint:
    endpoint: Endpoint
    score: float


@dataclass(frozen=True)
class SchedulingProfile:
    """Filters run in order, then weighted scorers, then the picker."""

    name: str
    filters: tuple[Filter, ...]
    scorers: tuple[tuple[Scorer, float], ...]
    picker: Picker


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """Endpoints picked by one profile, primary first (empty when nothing was eligible)."""

    endpoints: tuple[Endpoint, ...]

    @property
    def primary(self) -> Endpoint | None:
        return self.endpoints[0] if self.endpoints else None


DisaggregationMode = Literal["prefill-first", "decode-first"]


@dataclass(frozen=True, slots=True)
class DisaggregationPlan:
    """A request served in two parts: its prompt's KV cache computed on `prefill`, its tokens generated on `decode`.

    The front door executes it. `prefill-first`: the prefill request goes to `prefill` (the client's body with
    `kv_transfer_params: {"do_remote_decode": true}`, `max_tokens: 1`, not streamed), then the decode request to
    `decode` with the `kv_transfer_params` the prefill answered. `decode-first`: the decode request goes first
    with `cache_hit_threshold`; only when `decode` hands it back (`finish_reason: "cache_threshold"`) does the
    prefill run, then the decode again. A door that cannot call the prefill itself (ext_proc) names the prefill
    endpoint to the decode pod's sidecar in header `x-prefiller-host-port` (`prefill_host_port`).
    """

    mode: DisaggregationMode
    decode: Endpoint
    prefill: Endpoint
    cache_hit_threshold: float | None = None  # decode-first only: sent to the decode endpoint

    @property
    def prefill_host_port(self) -> str:
        """`ip:port` of the prefill endpoint, the IP in brackets when it is IPv6."""
        address = self.prefill.address
        host = f"[{address}]" if ":" in address else address
        return f"{host}:{self.prefill.port}"


@dataclass(frozen=True)
class SchedulingResult:
    """What the profile handler assembled: the primary profile's endpoints are where the request goes (target
    first, then fallbacks); `headers` are added to the request sent there; `disaggregation`, when set, says the
    request is served in two parts, which the front door executes (see `DisaggregationPlan`)."""

    profile_results: dict[str, ProfileResult]
    primary_profile: str
    headers: dict[str, str] = field(default_factory=dict)
    disaggregation: DisaggregationPlan | None = None

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The primary profile's endpoints: the target first, then fallbacks."""
        return self.profile_results[self.primary_profile].endpoints
