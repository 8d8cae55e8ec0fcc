"""The overload scenario: a pool offered more than it can serve, two priority bands, tenants of unequal appetite.

A fleet of `engines` simulated engines (the 8B H100 profile with `max_num_seqs` sequences per batch) serves
tenants, each named by the `x-gateway-inference-fairness-id` header and sending under one objective
(`x-gateway-inference-objective`):

- `critical`: one tenant (`chat`) at a fixed `critical_load` share of the pool's capacity, whatever the overload;
- `standard`: the other tenants at equal weight, except `greedy`, which sends `greedy_factor` times as much. They
  share what the overload adds: all tenants together offer `overload` x capacity.

Every request is a streamed completion: its tenant's system prompt (`system_tokens`, shared by the tenant's
requests) and a unique question (`question_tokens`); output lengths lognormal around `output_tokens` (sigma
`output_sigma`, clipped to [`output_tokens` / 4, 4 x `output_tokens`]), so that requests started together do not
all end together. Arrivals are Poisson per tenant over
`duration_s` seconds, drawn from `random.Random("<seed>:<tenant>")`, so a tenant's requests do not depend on the
others' rates.

Capacity (`capacity`) is measured, not assumed: the completion rate of the fleet kept full (the standard
tenants' requests offered far above what it serves, spread round-robin), in the discrete-event harness.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field, replace
from functools import lru_cache

from kvroute.bench.quality.generators import output_length, text
from kvroute.bench.quality.workloads import Fleet, FleetSpec, OutputLength
from kvroute.simulator.des.harness import WorkloadRequest, simulate
from kvroute.simulator.tokenizer import Tokenizer

CRITICAL = "critical"
STANDARD = "standard"
OBJECTIVE_HEADER = "x-gateway-inference-objective"
FAIRNESS_HEADER = "x-gateway-inference-fairness-id"


@dataclass(frozen=True)
class Tenant:
    name: str
    objective: str  # CRITICAL or STANDARD
    weight: float  # relative rate inside the standard band (the critical tenant's rate is `critical_load`)


@dataclass(frozen=True)
class TenantRequest:
    """A request of the scenario and who sent it."""

    request: WorkloadRequest
    tenant: str
    objective: str

    @property
    def headers(self) -> dict[str, str]:
        return {OBJECTIVE_HEADER: self.objective, FAIRNESS_HEADER: self.tenant}


@dataclass(frozen=True)
class Scenario:
    engines: int = 3
    max_num_seqs: int = 16
    system_tokens: int = 256
    question_tokens: int = 256
    output_tokens: int = 128  # the median
    output_sigma: float = 0.5
    duration_s: float = 60.0
    critical_load: float = 0.2  # the critical band's rate, as a share of capacity
    standard_tenants: int = 4  # including the greedy one
    greedy_factor: float = 5.0
    tenants: tuple[Tenant, ...] = field(init=False)

    def __post_init__(self) -> None:
        standard = [Tenant(f"tenant-{chr(ord('a') + i)}", STANDARD, 1.0) for i in range(self.standard_tenants - 1)]
        tenants = (Tenant("chat", CRITICAL, 1.0), *standard, Tenant("greedy", STANDARD, self.greedy_factor))
        object.__setattr__(self, "tenants", tenants)

    @property
    def output(self) -> OutputLength:
        median = self.output_tokens
        return OutputLength(median=median, sigma=self.output_sigma, min=max(1, median // 4), max=median * 4)

    @property
    def fleet_spec(self) -> FleetSpec:
        return FleetSpec(engines=self.engines, overrides={"max_num_seqs": self.max_num_seqs})

    @property
    def fleet(self) -> Fleet:
        return Fleet.from_spec(self.fleet_spec)

    @property
    def standard(self) -> tuple[Tenant, ...]:
        return tuple(t for t in self.tenants if t.objective == STANDARD)

    def rates(self, overload: float, capacity: float) -> dict[str, float]:
        """Requests per second per tenant when the pool is offered `overload` x `capacity` in all."""
        critical = self.critical_load * capacity
        standard_total = max(0.0, overload * capacity - critical)
        weights = sum(t.weight for t in self.standard)
        return {
            t.name: critical if t.objective == CRITICAL else standard_total * t.weight / weights for t in self.tenants
        }

    def requests(self, overload: float, capacity: float, seed: int, *, only: str | None = None) -> list[TenantRequest]:
        """The scenario's requests in arrival order (of the tenants of objective `only`, when given)."""
        tokenizer = Tokenizer()
        out: list[TenantRequest] = []
        for tenant in self.tenants:
            if only is not None and tenant.objective != only:
                continue
            rate = self.rates(overload, capacity)[tenant.name]
            if rate <= 0:
                continue
            rng = random.Random(f"{seed}:{tenant.name}")
            system = text(rng, self.system_tokens)
            now, index = rng.expovariate(rate), 0
            while now < self.duration_s:
                prompt = system + text(rng, self.question_tokens)
                request = WorkloadRequest(
                    request_id=f"{tenant.name}-{index}",
                    arrival_time=now,
                    prompt=prompt,
                    prompt_token_ids=tokenizer.encode(prompt),
                    max_tokens=output_length(self.output, rng),
                )
                out.append(TenantRequest(request, tenant.name, tenant.objective))
                now += rng.expovariate(rate)
                index += 1
        out.sort(key=lambda r: (r.request.arrival_time, r.request.request_id))
        return out


def capacity(scenario: Scenario) -> float:
    """Requests per second the fleet completes when kept full (see the module's docstring)."""
    return _capacity(replace(scenario, duration_s=0.0))  # the duration does not change the capacity


@lru_cache(maxsize=8)
def _capacity(scenario: Scenario) -> float:
    # The standard tenants' requests at 3x an estimate, round-robin: every engine stays full. Completions are counted
    # over the middle half of the window, away from the cold start and the drain.
    window = 40.0
    requests = replace(scenario, duration_s=window).requests(3.0, _ESTIMATE, 0, only=STANDARD)
    turn = itertools.count()
    result = simulate(
        scenario.fleet.profiles,
        [r.request for r in requests],
        lambda request, engines, now: next(turn) % len(engines),
    )
    done = sum(1 for r in result.records if r.finish_time is not None and window / 4 <= r.finish_time < 3 * window / 4)
    return done / (window / 2)


_ESTIMATE = 40.0  # requests per second; only sets the offered load of the calibration, well above capacity
