"""Every policy `kvroute bench quality` knows, by name, in report order.

A policy is built fresh for each run from the workload's fleet and the run's seed. Policies given as a path to
an `EndpointPickerConfig` file (`--policies mine.yaml`) run through kvroute's scheduler under the file's stem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvroute.bench.quality.adapter import SchedulerPolicy
from kvroute.bench.quality.policies import configs
from kvroute.bench.quality.policies.base import Disaggregated, Policy
from kvroute.bench.quality.policies.dynamo import Dynamo
from kvroute.bench.quality.policies.oracle import Oracle
from kvroute.bench.quality.policies.precise import PreciseSchedulerPolicy
from kvroute.bench.quality.policies.sglang import SGLangCacheAware
from kvroute.bench.quality.workloads import Fleet
from kvroute.router.config.recommended import recommended_config_text

Factory = Callable[[Fleet, int], Policy]


@dataclass(frozen=True)
class PolicyInfo:
    name: str
    summary: str
    make: Factory
    path: str | None = None  # the configuration file of a policy given as one

    @property
    def key(self) -> str:
        """What `lookup` takes to find this policy again (in another process)."""
        return self.path or self.name


def _recipe(recipe: configs.Recipe) -> Factory:
    return lambda fleet, seed: SchedulerPolicy(recipe.document(disaggregated=fleet.disaggregated), fleet, seed)


def _per_pool(make: Callable[[int], Policy]) -> Factory:
    """A one-pool policy; on a P/D fleet, one instance per pool (every request disaggregated)."""

    def factory(fleet: Fleet, seed: int) -> Policy:
        if not fleet.disaggregated:
            return make(seed)
        return Disaggregated(fleet, lambda role: make(seed * 2 + (role == "decode")))

    return factory


def _gie(fleet: Fleet, seed: int) -> Policy:
    return SchedulerPolicy(configs.gie_default_document(disaggregated=fleet.disaggregated), fleet, seed)


def _precise(fleet: Fleet, seed: int) -> Policy:
    return PreciseSchedulerPolicy(configs.LLMD_PRECISE.document(disaggregated=fleet.disaggregated), fleet, seed)


def _kvroute(fleet: Fleet, seed: int) -> Policy:
    return SchedulerPolicy(recommended_config_text(disaggregated=fleet.disaggregated), fleet, seed)


POLICIES: dict[str, PolicyInfo] = {
    info.name: info
    for info in (
        PolicyInfo("random", "random-picker", _recipe(configs.RANDOM)),
        PolicyInfo("round-robin", "round-robin-picker", _recipe(configs.ROUND_ROBIN)),
        PolicyInfo("least-queue", "queue 1 + running requests 1 (scraped)", _recipe(configs.LEAST_QUEUE)),
        PolicyInfo("gie-default", "GIE built-in: queue 2, kv 2, prefix 3", _gie),
        PolicyInfo("llmd-blend", "prefix 3, queue 2, kv 2, no-hit-lru 2", _recipe(configs.LLMD_BLEND)),
        PolicyInfo("llmd-precise", "precise prefix (KV events) 3, kv 2, queue 2", _precise),
        PolicyInfo(
            "sglang-cache-aware",
            "char radix tree, 0.3 / 64 / 1.5, min-load on miss",
            _per_pool(lambda seed: SGLangCacheAware()),
        ),
        PolicyInfo("dynamo", "cost = prefill + decode blocks, KV events, T=0", _per_pool(Dynamo)),
        PolicyInfo("oracle", "true cache and queues, min predicted TTFT", _per_pool(Oracle)),
        PolicyInfo("kvroute", "kvroute's recommended configuration", _kvroute),
    )
}


def lookup(key: str) -> PolicyInfo:
    """A policy by name, or a configuration file (a key ending in .yaml / .yml, or containing a slash)."""
    if key in POLICIES:
        return POLICIES[key]
    if not key.endswith((".yaml", ".yml")) and "/" not in key:
        raise ValueError(f"unknown policy {key!r}; known: {', '.join(POLICIES)}, or a config file path")
    path = Path(key)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    return PolicyInfo(
        path.stem, f"config file {path.name}", lambda fleet, seed: SchedulerPolicy(text, fleet, seed), path=key
    )


def select(selection: str) -> list[PolicyInfo]:
    """`all`, or a comma-separated list of names and config file paths; no name twice."""
    keys = [item.strip() for item in selection.split(",") if item.strip()]
    if keys == ["all"]:
        return list(POLICIES.values())
    if not keys:
        raise ValueError("no policy selected")
    chosen = [lookup(key) for key in keys]
    names = [info.name for info in chosen]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"policy name(s) selected twice: {', '.join(duplicates)}")
    return chosen
