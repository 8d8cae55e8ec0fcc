"""Which bands may dispatch at a given saturation: the configuration's usage-limit policy over the active bands.

`BandLimits` is what a configuration says (its `UsageLimitPolicy`, none meaning a ceiling of 1.0 for every band,
and the priorities it names); `gate` turns it, with the pool's saturation and the bands holding requests, into a
`BandGate`: a band may dispatch while the saturation is below its ceiling.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kvroute.router.config.builder import LoadedConfig
from kvroute.router.framework import UsageLimitPolicy


@dataclass(frozen=True)
class BandGate:
    saturation: float
    ceilings: Mapping[int, float]

    def admits(self, priority: int) -> bool:
        return self.saturation < self.ceilings.get(priority, 1.0)


@dataclass(frozen=True)
class BandLimits:
    policy: UsageLimitPolicy | None = None
    configured: frozenset[int] = frozenset()  # priorities the configuration names: active even with nothing queued

    def gate(self, saturation: float, queued: Iterable[int], arriving: int | None = None) -> BandGate:
        """The gate at `saturation`; the active priorities are the configured ones, those of the bands holding
        requests (`queued`) and that of a request `arriving`."""
        if self.policy is None:
            return BandGate(saturation, {})
        active = self.configured.union(queued)
        if arriving is not None:
            active = active | {arriving}
        priorities = sorted(active, reverse=True)
        return BandGate(saturation, self.policy.ceilings(priorities))


def band_limits(config: LoadedConfig) -> BandLimits:
    """The limits of `config`: its policy, and the priorities of its bands and objectives."""
    policy = config.usage_limit_policy
    flow = config.document.flow_control
    if policy is None or flow is None:
        return BandLimits()
    configured = {band.priority for band in flow.priority_bands}
    configured.update(flow.objectives.values(), config.admission.objectives.values())
    return BandLimits(policy, frozenset(configured))
