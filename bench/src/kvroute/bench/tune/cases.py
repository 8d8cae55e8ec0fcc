"""The cases a search runs on: (workload, run seed) pairs, split into training and held-out cases.

All of `kvroute tune`'s knowledge of where workloads come from is here:

- fixed workloads (names of `bench/workloads/`, workload YAML paths): the same workload on every seed; training
  cases run on `--train-seeds`, held-out cases on `--holdout-seeds` (arrivals and prompts are drawn from the
  run seed, so held-out cases are other draws of the same shape);
- families (`quality.families`): training cases are the `--sample` workloads sampled with each training seed,
  held-out cases those sampled with each held-out seed: other workloads of the family;
- traces (`.jsonl`, replayed by `quality.traces` on the `--fleet`): one fixed request sequence, so it is held
  out in time: training cases replay the first `1 - holdout_fraction` of the trace's duration (`<trace>-head`)
  and held-out cases the rest (`<trace>-tail`), each on its seeds.

Cases are ordered seed by seed, so a prefix of the training cases (what the first rung of the search runs on)
covers every workload of the first seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvroute.bench.quality import traces
from kvroute.bench.quality.families import FAMILIES_DIR, resolve_families, sample
from kvroute.bench.quality.workloads import WORKLOADS_DIR, TraceSpec, WorkloadSpec, resolve


class CaseError(ValueError):
    """The cases cannot be built (unknown workload, family or trace, or an invalid selection)."""


@dataclass(frozen=True)
class Case:
    id: str  # `<workload>@<seed>`, unique within a search
    spec: WorkloadSpec
    seed: int
    split: str  # "train" | "holdout"

    @property
    def disaggregated(self) -> bool:
        return self.spec.fleet.prefill_engines > 0


@dataclass(frozen=True)
class Selection:
    workloads: Sequence[str] = ()  # names, workload YAML paths, .jsonl traces
    families: Sequence[str] = ()  # names of `bench/families/` or family YAML paths
    sample: int = 3
    train_seeds: Sequence[int] = (0, 1, 2)
    holdout_seeds: Sequence[int] = (1000, 1001, 1002)
    holdout_fraction: float = 0.3
    fleet: str = "engines=8"  # traces: `traces.parse_fleet`'s `key=value,...`
    speed: float = 1.0  # traces: time compression
    max_context: int | None = None  # traces: clip input + output (default the profile's max_model_len)
    workloads_dir: Path = WORKLOADS_DIR
    families_dir: Path = FAMILIES_DIR


def _trace_specs(path: str, selection: Selection) -> tuple[WorkloadSpec, WorkloadSpec]:
    """(the trace's first part, the rest): two workloads of one trace, cut at a share of its duration."""
    try:
        fleet = traces.parse_fleet(selection.fleet)
        requests = traces.replay(TraceSpec(kind="trace", path=path), max_model_len=1 << 30)
    except ValueError as exc:
        raise CaseError(str(exc)) from None
    if len(requests) < 2:
        raise CaseError(f"{path}: a trace needs at least two requests to be held out in time")
    duration = requests[-1].arrival_time
    cut = round(duration * (1.0 - selection.holdout_fraction), 6)
    parts = []
    for part, window in (("head", (0.0, cut)), ("tail", (cut, duration + 1.0))):
        options = {"speed": selection.speed, "window": window, "max_context": selection.max_context}
        spec = traces.trace_workload(path, fleet, **options)
        description = f"{spec.description}, trace seconds [{window[0]:g}, {min(window[1], duration):g}]"
        parts.append(spec.model_copy(update={"name": f"{spec.name}-{part}", "description": description}))
    return parts[0], parts[1]


def _fixed(selection: Selection) -> tuple[list[WorkloadSpec], list[WorkloadSpec]]:
    """(training, held-out) specs of `--workloads`: the same spec twice, except for traces cut in time."""
    train: list[WorkloadSpec] = []
    holdout: list[WorkloadSpec] = []
    for item in selection.workloads:
        if item.endswith(".jsonl"):
            head, tail = _trace_specs(item, selection)
        else:
            try:
                (head,) = resolve(item, selection.workloads_dir)
            except ValueError as exc:
                raise CaseError(str(exc)) from None
            tail = head
        train.append(head)
        holdout.append(tail)
    return train, holdout


def _family_specs(selection: Selection, seed: int) -> list[WorkloadSpec]:
    if not selection.families:
        return []
    try:
        chosen = resolve_families(",".join(selection.families), selection.families_dir)
    except ValueError as exc:
        raise CaseError(str(exc)) from None
    return [spec for family in chosen for spec in sample(family, seed, selection.sample)]


def build_cases(selection: Selection) -> tuple[list[Case], list[Case]]:
    """(training cases, held-out cases)."""
    if not selection.workloads and not selection.families:
        raise CaseError("nothing to tune on: give --workloads and/or --families")
    if not selection.train_seeds or not selection.holdout_seeds:
        raise CaseError("give at least one training seed and one held-out seed")
    overlap = sorted(set(selection.train_seeds) & set(selection.holdout_seeds))
    if overlap:
        raise CaseError(f"seeds both training and held-out: {', '.join(map(str, overlap))}")
    if not 0 < selection.holdout_fraction < 1:
        raise CaseError(f"--holdout-fraction must be between 0 and 1 (got {selection.holdout_fraction})")
    if selection.sample < 1:
        raise CaseError("--sample must be 1 or more")
    fixed_train, fixed_holdout = _fixed(selection)
    train = [
        Case(f"{s.name}@{seed}", s, seed, "train")
        for seed in selection.train_seeds
        for s in fixed_train + _family_specs(selection, seed)
    ]
    holdout = [
        Case(f"{s.name}@{seed}", s, seed, "holdout")
        for seed in selection.holdout_seeds
        for s in fixed_holdout + _family_specs(selection, seed)
    ]
    ids = [case.id for case in train + holdout]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CaseError(f"case(s) selected twice: {', '.join(duplicates)}")
    if len({case.disaggregated for case in train + holdout}) > 1:
        raise CaseError(
            "tune P/D (prefill_engines > 0) and aggregated workloads separately: one configuration serves one "
            "kind of pool"
        )
    return train, holdout
