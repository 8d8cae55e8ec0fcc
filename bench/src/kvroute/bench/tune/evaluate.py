"""Running policies on cases, in this process or in `jobs` worker processes, through the journal.

A run is one policy on one case: the quality benchmark's `run_one` on the case's workload built from its seed.
Trials are configuration files (`--out/trials/trial-NNN.yaml`) that workers look up again by path; every trial
runs under the one policy name `TRIAL_NAME`, so all trials of a case share the picker's random stream (common
random numbers: two trials differ in their configuration only, not in their tie-breaks). Peers run under their
own names, as in `kvroute bench quality`.

Results come back keyed by (policy, case id) whatever the order of completion, and each is written to the
journal as soon as it arrives, so an interruption loses at most the runs in flight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from kvroute.bench.quality.generators import Workload, build
from kvroute.bench.quality.policies.catalog import lookup
from kvroute.bench.quality.runner import run_one
from kvroute.bench.quality.workloads import WorkloadSpec
from kvroute.bench.tune.cases import Case
from kvroute.bench.tune.journal import Journal, Key

TRIAL_NAME = "tuned"

Progress = Callable[[int], None]  # more runs are planned (> 0) or one finished (0)


@dataclass(frozen=True)
class Runnable:
    """A policy to run: its journal label (a trial's digest or a peer's name), the key `catalog.lookup` finds it
    by, and the name it runs under (None: its own)."""

    label: str
    key: str
    name: str | None = None


_built: dict[tuple[str, int], Workload] = {}  # in each process: the workload of the latest case


def _run(spec: WorkloadSpec, seed: int, key: str, name: str | None) -> dict[str, Any]:
    cache_key = (spec.model_dump_json(), seed)
    workload = _built.get(cache_key)
    if workload is None:
        _built.clear()  # runs are submitted case by case: keeping one workload is enough
        workload = _built[cache_key] = build(spec, seed)
    info = lookup(key)
    if name is not None:
        info = dataclasses.replace(info, name=name)
    return run_one(workload, info, seed)


class Evaluator:
    def __init__(self, journal: Journal, *, jobs: int = 1, progress: Progress | None = None) -> None:
        self.journal = journal
        self.jobs = jobs
        self.progress = progress

    def metrics(self, label: str, case: Case) -> dict[str, Any]:
        found = self.journal.get((label, case.id))
        if found is None:
            raise KeyError(f"{label} has not run on {case.id}")
        return found

    def run(self, runs: Sequence[tuple[Runnable, Case]]) -> None:
        """Runs every (policy, case) pair the journal does not have yet; pairs are taken case by case."""
        todo: dict[Key, tuple[Runnable, Case]] = {}
        for runnable, case in sorted(runs, key=lambda run: run[1].id):
            key = (runnable.label, case.id)
            if self.journal.get(key) is None:
                todo.setdefault(key, (runnable, case))
        if not todo:
            return
        if self.progress is not None:
            self.progress(len(todo))
        if self.jobs <= 1:
            for key, (runnable, case) in todo.items():
                self._done(key, _run(case.spec, case.seed, runnable.key, runnable.name))
            return
        with ProcessPoolExecutor(max_workers=self.jobs) as pool:
            futures = {
                pool.submit(_run, case.spec, case.seed, runnable.key, runnable.name): key
                for key, (runnable, case) in todo.items()
            }
            for future in as_completed(futures):
                self._done(futures[future], future.result())

    def _done(self, key: Key, metrics: dict[str, Any]) -> None:
        self.journal.record(key, metrics)
        if self.progress is not None:
            self.progress(0)
