"""The workloads of `kvroute bench quality` as live traffic: the same requests, replayed open loop on real processes.

A workload (a file of `bench/workloads/`, a family sample or a trace) is built exactly as the quality benchmark
builds it (`kvroute.bench.quality.generators.build`, same seed, same requests). Live, it becomes:

- **a fleet of `kvroute sim serve` processes**, one per engine, with the workload's profile and the profile fields
  the simulator takes as flags (`num_gpu_blocks`, `max_num_seqs`, `max_num_batched_tokens`, `block_size`,
  `max_model_len`, `max_loras`); a workload that overrides any other field cannot run live and is refused. A
  slow engine runs at `--time-scale` x `slow_factor` (every step that much longer in wall time). A fleet larger
  than `max_sims` is cut to `max_sims` engines (slow ones in proportion, at least one if any) and the arrivals are
  stretched by engines / `max_sims`, so that each engine meets the same request rate; what each engine caches
  is then a larger share of the demand, which the description states. P/D workloads are refused: the peers have
  no P/D mode to compare with here.
- **a plan**: each request at `arrival_time x time_scale` seconds, its text prompt on `/v1/completions` (the
  simulator tokenizes it into the same token ids as the harness), `max_tokens` of its output length (the
  simulator generates exactly that many), the adapter name as `model` for a LoRA request. `time_scale` below 1
  compresses the whole run: arrivals and every engine's steps together, so the load is the same as at 1.
- at most `max_requests` requests and `duration` seconds of (modelled) arrivals: the first ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kvroute.bench.demo import MODEL
from kvroute.bench.loadgen import PlannedRequest
from kvroute.bench.quality.generators import Workload, build
from kvroute.bench.quality.runner import describe
from kvroute.bench.quality.workloads import Fleet, WorkloadSpec
from kvroute.simulator.engine.profiles import PROFILES

# Profile fields that `kvroute sim serve` takes as flags of the same name.
LIVE_OVERRIDES = (
    "num_gpu_blocks",
    "max_num_seqs",
    "max_num_batched_tokens",
    "block_size",
    "max_model_len",
    "max_loras",
)


class LiveWorkloadError(ValueError):
    """The workload cannot be replayed on live processes."""


@dataclass(frozen=True)
class LiveWorkload:
    name: str
    info: dict[str, object]  # `kvroute.bench.quality.runner.describe` of the workload, plus the live settings
    engine_args: tuple[tuple[str, ...], ...]  # `kvroute sim serve` flags, one tuple per engine
    plan: tuple[PlannedRequest, ...]
    lora: bool  # some requests name an adapter
    harness: Workload  # the same requests on the same fleet, in modelled time: for the discrete-event harness

    @property
    def engines(self) -> int:
        return len(self.engine_args)


def engine_flags(spec: WorkloadSpec, time_scale: float, slow: bool) -> tuple[str, ...]:
    fleet = spec.fleet
    unknown = sorted(set(fleet.overrides) - set(LIVE_OVERRIDES))
    if unknown:
        raise LiveWorkloadError(
            f"{spec.name}: fleet.overrides {', '.join(unknown)} cannot be set on `kvroute sim serve` "
            f"(live runs take {', '.join(LIVE_OVERRIDES)})"
        )
    flags = ["--model", MODEL, "--profile", fleet.profile]
    for field in LIVE_OVERRIDES:
        if field in fleet.overrides:
            flags += [f"--{field.replace('_', '-')}", str(fleet.overrides[field])]
    scale = time_scale * (fleet.slow_factor if slow else 1.0)
    return (*flags, "--time-scale", f"{scale:g}")


def cut_fleet(engines: int, slow: int, max_sims: int) -> tuple[int, int]:
    """(engines, slow engines) of the live fleet: at most `max_sims`, the slow ones in proportion."""
    if engines <= max_sims:
        return engines, slow
    kept_slow = min(max_sims - 1, max(1, round(slow * max_sims / engines))) if slow else 0
    return max_sims, kept_slow


def live_workload(
    spec: WorkloadSpec,
    seed: int,
    *,
    time_scale: float = 1.0,
    max_sims: int = 8,
    max_requests: int | None = None,
    duration: float | None = None,
) -> LiveWorkload:
    """The live form of `spec` (see the module's docstring); raises `LiveWorkloadError` if it has none."""
    if spec.fleet.prefill_engines:
        raise LiveWorkloadError(f"{spec.name}: P/D workloads are not replayed live (the peers have no P/D mode here)")
    if spec.fleet.profile not in PROFILES:
        raise LiveWorkloadError(f"{spec.name}: unknown simulator profile {spec.fleet.profile!r}")
    if not 0 < time_scale < math.inf or max_sims < 1:
        raise LiveWorkloadError("time_scale must be positive and max_sims at least 1")
    workload = build(spec, seed)
    engines, slow = cut_fleet(spec.fleet.engines, spec.fleet.slow_engines, max_sims)
    stretch = spec.fleet.engines / engines
    flags = [engine_flags(spec, time_scale, slow=i >= engines - slow) for i in range(engines)]
    requests = [r for r in workload.requests if duration is None or r.arrival_time <= duration]
    requests = requests[:max_requests] if max_requests is not None else requests
    adapters = sorted({r.lora_name for r in requests if r.lora_name})
    if adapters:
        flags = [(*f, "--lora-modules", *adapters) for f in flags]
    requests = [replace(r, arrival_time=r.arrival_time * stretch) for r in requests]
    plan = tuple(
        PlannedRequest(
            at=r.arrival_time * time_scale,
            body={"model": r.lora_name or MODEL, "prompt": r.prompt, "max_tokens": r.max_tokens},
        )
        for r in requests
    )
    info = describe(workload)
    info.update(
        engines=engines,
        slow_engines=slow,
        requests=len(plan),
        prompt_tokens=sum(len(r.prompt_token_ids) for r in requests),
        output_tokens=sum(r.max_tokens for r in requests),
        last_arrival_s=round(requests[-1].arrival_time, 6) if requests else 0.0,
        live={
            "time_scale": time_scale,
            "engines_in_workload": spec.fleet.engines,
            "arrivals_stretched": stretch,
            "requests_in_workload": len(workload.requests),
        },
    )
    fleet = spec.fleet.model_copy(update={"engines": engines, "slow_engines": slow})
    harness = Workload(spec, Fleet.from_spec(fleet), requests)
    return LiveWorkload(spec.name, info, tuple(flags), plan, bool(adapters), harness)


def live_workloads(specs: Sequence[WorkloadSpec], seed: int, **options: float | int | None) -> list[LiveWorkload]:
    return [live_workload(spec, seed, **options) for spec in specs]  # type: ignore[arg-type]
