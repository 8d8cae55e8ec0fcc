"""One tuning run from start to finish: cases, space, trials, successive halving, the final comparison.

The result is plain data (what `report.json` holds): the search's rungs, the winner and what it changed, and for
the training and the held-out cases the per-case metrics of the base, the winner and the peers, each compared
with the base. The winner replaces the base only when it is also better on the held-out cases.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvroute.bench.quality.policies.catalog import lookup
from kvroute.bench.tune.cases import Case, Selection, build_cases
from kvroute.bench.tune.evaluate import TRIAL_NAME, Evaluator, Progress, Runnable
from kvroute.bench.tune.journal import Journal
from kvroute.bench.tune.objective import compare, geomean
from kvroute.bench.tune.search import successive_halving
from kvroute.bench.tune.space import load_space
from kvroute.bench.tune.trials import Trial, make_trial, write_trial
from kvroute.router.config.recommended import recommended_config_text

METRICS = ("ttft_p50_s", "ttft_p90_s", "output_tokens_per_s")
BASE = "base"


@dataclass(frozen=True)
class Options:
    selection: Selection
    out: Path
    base: Path | None = None  # None: kvroute's recommended configuration
    space: Path | None = None
    trials: int = 24
    jobs: int = 1
    seed: int = 0
    peers: Sequence[str] = field(default_factory=tuple)


def _base_text(options: Options, cases: Sequence[Case]) -> tuple[str, str]:
    if options.base is None:
        return recommended_config_text(disaggregated=cases[0].disaggregated), "recommended"
    try:
        return options.base.read_text(), str(options.base)
    except OSError as exc:
        raise ValueError(f"{options.base}: cannot read: {exc.strerror}") from None


def _changes(trial: Trial, base: Trial) -> dict[str, list[Any]]:
    return {name: [base.point[name], value] for name, value in trial.point.items() if value != base.point[name]}


def tune(options: Options, progress: Progress | None = None) -> dict[str, Any]:
    train, holdout = build_cases(options.selection)
    base_text, base_source = _base_text(options, train)
    space = load_space(base_text, options.space)
    for peer in options.peers:
        lookup(peer)  # an unknown peer fails before anything runs
    trials = [make_trial(space, options.seed, i) for i in range(options.trials + 1)]
    paths = [write_trial(trial, options.out / "trials") for trial in trials]
    identity = {
        "base": hashlib.sha256(base_text.encode()).hexdigest(),
        "space": space.describe(),
        "cases": [[c.id, c.split, c.spec.model_dump(mode="json")] for c in train + holdout],
        "seed": options.seed,
    }
    evaluator = Evaluator(Journal(options.out / "journal.jsonl", identity), jobs=options.jobs, progress=progress)
    runnables = {
        trial.index: Runnable(f"config:{trial.digest}", str(path), TRIAL_NAME)
        for trial, path in zip(trials, paths, strict=True)
    }

    def score(indices: Sequence[int], count: int) -> dict[int, float]:
        cases = train[:count]
        evaluator.run([(runnables[i], case) for i in sorted({0, *indices}) for case in cases])
        base = [evaluator.metrics(runnables[0].label, case) for case in cases]
        return {
            i: compare([evaluator.metrics(runnables[i].label, case) for case in cases], base)["objective"]
            for i in indices
        }

    outcome = successive_halving(range(len(trials)), len(train), score)
    winner = trials[outcome.winner]
    compared: dict[str, Runnable] = {BASE: runnables[0]}
    if outcome.winner:
        compared[winner.name] = runnables[outcome.winner]
    compared.update({peer: Runnable(f"peer:{peer}", peer) for peer in options.peers})
    evaluator.run([(runnable, case) for runnable in compared.values() for case in train + holdout])

    splits = {split: _split(evaluator, compared, cases) for split, cases in (("train", train), ("holdout", holdout))}
    held_out = splits["holdout"]["policies"].get(winner.name, {}).get("vs_base", {}).get("objective")
    generalizes = bool(outcome.winner) and held_out is not None and held_out < 1.0
    if not outcome.winner:
        verdict = "no candidate beat the base on the training cases: keep the base"
    elif not generalizes:
        verdict = f"no improvement that generalizes: keep the base ({winner.name} won on training cases only)"
    else:
        verdict = f"{winner.name} beats the base on held-out cases too (objective {held_out:.3f}x the base)"
    return {
        "base": base_source,
        "seed": options.seed,
        "trials": options.trials,
        "space": space.describe(),
        "search": {
            "rungs": [
                {
                    "cases": rung.cases,
                    "scores": {trials[i].name: round(s, 6) for i, s in rung.scores.items()},
                    "promoted": [trials[i].name for i in rung.promoted],
                }
                for rung in outcome.rungs
            ],
            "winner": winner.name,
        },
        "winner": {"trial": winner.name, "file": str(paths[outcome.winner]), "changes": _changes(winner, trials[0])},
        "splits": splits,
        "verdict": {"generalizes": generalizes, "chosen": winner.name if generalizes else BASE, "text": verdict},
        "configs": {BASE: trials[0].text, **({winner.name: winner.text} if outcome.winner else {})},
    }


def _split(evaluator: Evaluator, compared: dict[str, Runnable], cases: Sequence[Case]) -> dict[str, Any]:
    base = [evaluator.metrics(compared[BASE].label, case) for case in cases]
    policies: dict[str, Any] = {}
    for name, runnable in compared.items():
        runs = [evaluator.metrics(runnable.label, case) for case in cases]
        policies[name] = {
            "per_case": {
                case.id: {k: run.get(k) for k in (*METRICS, "unfinished")}
                for case, run in zip(cases, runs, strict=True)
            },
            "geomean": {k: _geomean([run.get(k) for run in runs]) for k in METRICS},
            "vs_base": {k: round(v, 6) for k, v in compare(runs, base).items()},
        }
    return {"cases": [case.id for case in cases], "policies": policies}


def _geomean(values: Sequence[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float) and v > 0]
    return round(geomean(numbers), 6) if len(numbers) == len(values) else None
