"""Every policy `kvroute bench quality` knows, by name, in report order.

A policy is built fresh for each run from the workload's fleet and the run's seed. Policies given as a path to
an `EndpointPickerConfig` file (`--policies mine.yaml`) run through kvroute's scheduler under the file's stem.
`NAME@N` is policy NAME run as a fleet of N router replicas, each seeing 1/N of the traffic (`fleet`), and
`NAME@N+sync` the same with kvroute's fleet sync between the replicas (policies on kvroute's scheduler only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvroute.bench.quality.adapter import SchedulerPolicy
from kvroute.bench.quality.policies import configs
from kvroute.bench.quality.policies.base import Disaggregated, Policy
from kvroute.bench.quality.policies.dynamo import Dynamo
from kvroute.bench.quality.policies.fleet import RouterFleet, replica_seed
from kvroute.bench.quality.policies.oracle import Oracle
from kvroute.bench.quality.policies.precise import KVEventsSchedulerPolicy
from kvroute.bench.quality.policies.sglang import SGLangCacheAware
from kvroute.bench.quality.workloads import Fleet
from kvroute.router.config.recommended import recommended_config_text

Factory = Callable[[Fleet, int], Policy]


@dataclass(frozen=True)
class PolicyInfo:
    name: str
    summary: str
    make: Factory
    spec: str | None = None  # what `lookup` was given, when not the name: a configuration file, `NAME@N`

    @property
    def key(self) -> str:
        """What `lookup` takes to find this policy again (in another process)."""
        return self.spec or self.name


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
    document = configs.LLMD_PRECISE.document(disaggregated=fleet.disaggregated)
    return KVEventsSchedulerPolicy(configs.with_precise_prefix(document), fleet, seed)


def _kvroute_precise(fleet: Fleet, seed: int) -> Policy:
    document = recommended_config_text(disaggregated=fleet.disaggregated)
    return KVEventsSchedulerPolicy(configs.with_precise_prefix(document), fleet, seed)


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
            "llmd-optimized",
            "prefix affinity filter (0.8, until 286,720 tokens behind), token load",
            _recipe(configs.LLMD_OPTIMIZED),
        ),
        PolicyInfo(
            "sglang-cache-aware",
            "char radix tree, 0.3 / 64 / 1.5, min-load on miss",
            _per_pool(lambda seed: SGLangCacheAware()),
        ),
        PolicyInfo("dynamo", "cost = prefill + decode blocks, KV events, T=0", _per_pool(Dynamo)),
        PolicyInfo("oracle", "true cache and queues, min predicted TTFT", _per_pool(Oracle)),
        PolicyInfo("kvroute", "kvroute's recommended configuration", _kvroute),
        PolicyInfo("kvroute-precise", "kvroute's recommended configuration, prefix from KV events", _kvroute_precise),
    )
}


def lookup(key: str) -> PolicyInfo:
    """A policy by name, or a configuration file (a key ending in .yaml / .yml, or containing a slash), either
    optionally followed by `@N`: that policy as a fleet of N replicas."""
    base, at, count = key.rpartition("@")
    sync = count.endswith("+sync")
    count = count.removesuffix("+sync")
    if at and count.isdigit() and base:
        return as_fleet(lookup(base), int(count), sync=sync)
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
        path.stem, f"config file {path.name}", lambda fleet, seed: SchedulerPolicy(text, fleet, seed), spec=key
    )


def as_fleet(info: PolicyInfo, replicas: int, *, sync: bool = False) -> PolicyInfo:
    """`info` run by `replicas` router replicas, sharing their decisions with `sync` (`@1` is the policy)."""
    suffix = f"@{replicas}" + ("+sync" if sync else "")
    if replicas < 1:
        raise ValueError(f"{info.name}{suffix}: a fleet has at least one replica")
    if replicas == 1 and not sync:
        return info

    def make(fleet: Fleet, seed: int) -> Policy:
        return RouterFleet(replicas, lambda k: info.make(fleet, replica_seed(seed, k)), sync=sync)

    summary = f"{info.summary}; {replicas} replicas" + (" with fleet sync" if sync else "")
    return PolicyInfo(info.name + suffix, summary, make, spec=info.key + suffix)


SYNCED = ("kvroute",)  # policies whose replicas run with fleet sync, as kvroute's fleet is deployed


def with_replicas(policies: Sequence[PolicyInfo], replicas: Sequence[int]) -> list[PolicyInfo]:
    """Each policy at each replica count (1 is the policy itself); kvroute's also with fleet sync."""
    expanded: list[PolicyInfo] = []
    for info in policies:
        for count in replicas:
            expanded.append(as_fleet(info, count))
            if count > 1 and info.name.startswith(SYNCED):
                expanded.append(as_fleet(info, count, sync=True))
    return expanded


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
