"""Run workloads x policies through the harness; collect the metrics in a deterministic structure.

Each run gets its own policy instance, seeded from `crc32("<workload>:<policy>:<seed>")`, on the workload's
requests built from the run seed (`generators.build`), so a run's result depends on nothing else: not on the
order of the runs, nor on how many run in parallel (`jobs` worker processes), nor on the machine's speed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from kvroute.bench.quality.generators import Workload, build
from kvroute.bench.quality.metrics import summarise
from kvroute.bench.quality.policies.catalog import PolicyInfo, lookup
from kvroute.bench.quality.workloads import WorkloadSpec
from kvroute.simulator.des.harness import simulate

Progress = Callable[[str, str], None]


def policy_seed(workload: str, policy: str, seed: int) -> int:
    return zlib.crc32(f"{workload}:{policy}:{seed}".encode())


def run_one(workload: Workload, info: PolicyInfo, seed: int) -> dict[str, Any]:
    policy = info.make(workload.fleet, policy_seed(workload.spec.name, info.name, seed))
    result = simulate(
        workload.fleet.profiles,
        workload.requests,
        policy.route,
        listener=policy,
        tick_interval=policy.tick_interval,
        record_kv_events=policy.needs_kv_events,
    )
    return {**summarise(result, workload.fleet), **policy.extra_metrics()}


def describe(workload: Workload) -> dict[str, Any]:
    requests = workload.requests
    fleet = workload.fleet
    profile = fleet.profiles[0]
    return {
        "description": workload.spec.description,
        "family": workload.spec.family,
        "engines": len(fleet.roles),
        "prefill_engines": len(fleet.indices("prefill")),
        "profile": profile.name,
        "num_gpu_blocks": profile.num_gpu_blocks,
        "slow_engines": workload.spec.fleet.slow_engines,
        "slow_factor": workload.spec.fleet.slow_factor,
        "fleet_kv_tokens": fleet.kv_tokens,
        "requests": len(requests),
        "prompt_tokens": sum(len(r.prompt_token_ids) for r in requests),
        "output_tokens": sum(r.max_tokens for r in requests),
        "last_arrival_s": round(requests[-1].arrival_time, 6) if requests else 0.0,
        "spec": workload.spec.model_dump(mode="json"),
    }


_built: dict[tuple[str, int], Workload] = {}  # in a worker process: the workload of its latest task


def _task(spec: WorkloadSpec, policy_key: str, seed: int) -> dict[str, Any]:
    key = (spec.model_dump_json(), seed)
    workload = _built.get(key)
    if workload is None:
        _built.clear()  # tasks are submitted workload by workload: keeping one is enough
        workload = _built[key] = build(spec, seed)
    # Policies are looked up again from their key: their factories do not cross a process boundary.
    return run_one(workload, lookup(policy_key), seed)


def run(
    specs: Sequence[WorkloadSpec],
    policies: Sequence[PolicyInfo],
    seed: int,
    *,
    jobs: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """{"seed", "workloads": {name: description}, "policies": {name: summary}, "results": {workload: {policy:
    metrics}}}, in the order given whatever the order of completion."""
    results: dict[str, dict[str, dict[str, Any]]] = {spec.name: {} for spec in specs}
    descriptions: dict[str, dict[str, Any]] = {}
    if jobs <= 1:
        for spec in specs:
            workload = build(spec, seed)
            descriptions[spec.name] = describe(workload)
            for info in policies:
                results[spec.name][info.name] = run_one(workload, info, seed)
                if progress is not None:
                    progress(spec.name, info.name)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {
                pool.submit(_task, spec, info.key, seed): (spec.name, info.name) for spec in specs for info in policies
            }
            for spec in specs:  # described here while the workers run
                descriptions[spec.name] = describe(build(spec, seed))
            for future in as_completed(futures):
                workload_name, policy_name = futures[future]
                results[workload_name][policy_name] = future.result()
                if progress is not None:
                    progress(workload_name, policy_name)
    return {
        "benchmark": "quality",
        "seed": seed,
        "workloads": descriptions,
        "policies": {info.name: info.summary for info in policies},
        "results": {spec.name: {info.name: results[spec.name][info.name] for info in policies} for spec in specs},
    }
