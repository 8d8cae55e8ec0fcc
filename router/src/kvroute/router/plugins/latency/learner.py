"""Per-endpoint coefficients learned online from observed latencies: recursive least squares with forgetting.

Each endpoint starts from the profile's coefficients `c0` (`model.StepCosts`: per prefill token, per step, per
decoding sequence, per context token, per request). What is learned is a vector of multipliers `m` (one per coefficient,
starting at 1), so that the unknowns have the same scale whatever the profile:

    observation:  y ~ sum_i m_i * c0_i * f_i          (f: `model.ttft_features` or `model.step_features`)
    x_i  = c0_i * f_i / y_scale                       (y_scale = sqrt(y * predicted): errors count relatively,
                                                       as much for a too-slow as for a too-fast prediction)
    gain = P x / (lambda + x' P x)
    m   <- m + gain * (y / y_scale - x' m)
    P   <- (P - gain x' P) / lambda

with forgetting factor `lambda` (default 0.995: about the last 200 observations count), the covariance `P`
starting at `prior_variance * I` and its trace never growing past the initial one (so a long run of
uninformative observations cannot wind it up), and each multiplier clamped to [1 / `max_ratio`, `max_ratio`]
(default 20) so a burst of outliers (a stalled connection, a paused pod) cannot make an endpoint free or unusable.
Dividing by `y_scale` makes the fit minimise relative error: a 10 ms inter-token time and a 2 s TTFT weigh alike.

An endpoint twice as slow as its profile in every respect converges to multipliers near 2; one with twice the
per-token prefill cost only, to (2, 1, 1, 1, 1) once it has seen both short and long prompts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from kvroute.router.plugins.latency.model import Features, StepCosts

_N = 5


@dataclass(slots=True)
class _Fit:
    multipliers: list[float]
    covariance: list[list[float]]
    observations: int = 0


class CoefficientLearner:
    def __init__(
        self,
        prior: StepCosts,
        *,
        forgetting: float = 0.995,
        prior_variance: float = 0.25,
        max_ratio: float = 20.0,
    ) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError("forgetting must be in (0, 1]")
        self.prior = prior
        self._prior = prior.as_tuple()
        self._lambda = forgetting
        self._variance = prior_variance
        self._low, self._high = 1.0 / max_ratio, max_ratio
        self._fits: dict[str, _Fit] = {}
        # The coefficients of each observed endpoint, kept from its last observation: scoring reads them for every
        # candidate of every request.
        self._coefficients: dict[str, Features] = {}

    def costs(self, endpoint_id: str) -> StepCosts:
        """The endpoint's current coefficients (the prior until it has been observed)."""
        coefficients = self._coefficients.get(endpoint_id)
        return self.prior if coefficients is None else StepCosts(*coefficients)

    def coefficients(self, endpoint_ids: Iterable[str]) -> list[Features]:
        """`costs(e).as_tuple()` for each endpoint, in order."""
        get, prior = self._coefficients.get, self._prior
        return [get(endpoint_id, prior) for endpoint_id in endpoint_ids]

    def multipliers(self, endpoint_id: str) -> tuple[float, ...]:
        fit = self._fits.get(endpoint_id)
        return (1.0,) * _N if fit is None else tuple(fit.multipliers)

    def observations(self, endpoint_id: str) -> int:
        fit = self._fits.get(endpoint_id)
        return 0 if fit is None else fit.observations

    def observe(self, endpoint_id: str, features: Features, observed: float) -> None:
        """One observed duration (seconds) whose model is `features` (see the module docstring)."""
        if not 0.0 < observed < float("inf"):
            return
        fit = self._fits.get(endpoint_id)
        if fit is None:
            covariance = [[self._variance if i == j else 0.0 for j in range(_N)] for i in range(_N)]
            fit = self._fits[endpoint_id] = _Fit([1.0] * _N, covariance)
        m, p = fit.multipliers, fit.covariance
        raw = [c * f for c, f in zip(self._prior, features, strict=True)]
        scale = max(math.sqrt(observed * max(sum(r * w for r, w in zip(raw, m, strict=True)), 1e-12)), 1e-9)
        x = [r / scale for r in raw]
        px = [sum(p[i][j] * x[j] for j in range(_N)) for i in range(_N)]
        gain = [v / (self._lambda + sum(xi * v for xi, v in zip(x, px, strict=True))) for v in px]
        error = observed / scale - sum(xi * w for xi, w in zip(x, m, strict=True))
        for i in range(_N):
            m[i] = min(self._high, max(self._low, m[i] + gain[i] * error))
        # P <- (P - gain px') / lambda; px' = x' P since P is symmetric.
        for i in range(_N):
            row = p[i]
            for j in range(_N):
                row[j] = (row[j] - gain[i] * px[j]) / self._lambda
        trace = sum(p[i][i] for i in range(_N))
        if trace > _N * self._variance:
            shrink = _N * self._variance / trace
            for row in p:
                for j in range(_N):
                    row[j] *= shrink
        fit.observations += 1
        c0, c1, c2, c3, c4 = self._prior
        self._coefficients[endpoint_id] = (c0 * m[0], c1 * m[1], c2 * m[2], c3 * m[3], c4 * m[4])

    def forget(self, endpoint_id: str) -> None:
        self._fits.pop(endpoint_id, None)
        self._coefficients.pop(endpoint_id, None)

    def __len__(self) -> int:
        return len(self._fits)
