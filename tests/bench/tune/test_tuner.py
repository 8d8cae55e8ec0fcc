"""A whole search on a tiny workload: its answer depends on the seed only, not on `jobs` nor on an interruption."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvroute.bench.tune.cases import Selection
from kvroute.bench.tune.tuner import Options, tune


class Interrupted(Exception):
    pass


def _options(tiny_file: Path, base_file: Path, out: Path, jobs: int = 1) -> Options:
    selection = Selection(workloads=[str(tiny_file)], train_seeds=[0, 1, 2], holdout_seeds=[1000])
    return Options(selection, out, base=base_file, trials=5, jobs=jobs, seed=2, peers=["gie-default"])


def _answer(result: dict[str, Any]) -> str:
    """The result without where it was written."""
    return json.dumps({**result, "base": None, "winner": {**result["winner"], "file": None}}, sort_keys=True)


def _journal_runs(out: Path) -> int:
    return len((out / "journal.jsonl").read_text().splitlines()) - 1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tune")
    from .conftest import BASE, TINY

    (root / "tiny.yaml").write_text(TINY)
    (root / "base.yaml").write_text(BASE)
    return tune(_options(root / "tiny.yaml", root / "base.yaml", root / "out"))


def test_the_search_runs_rungs_then_compares(uninterrupted: dict[str, Any]) -> None:
    rungs = uninterrupted["search"]["rungs"]
    # 6 configurations on one case; the best ceil(6 / 3) = 2 and the base on all three
    assert [(len(r["scores"]), r["cases"]) for r in rungs] == [(6, 1), (len(rungs[0]["promoted"]), 3)]
    assert "trial-000" in rungs[0]["promoted"] and rungs[0]["scores"]["trial-000"] == 1.0
    train = uninterrupted["splits"]["train"]
    assert train["cases"] == ["tiny@0", "tiny@1", "tiny@2"]
    assert train["policies"]["base"]["vs_base"]["objective"] == 1.0
    assert "gie-default" in uninterrupted["splits"]["holdout"]["policies"]
    winner = uninterrupted["search"]["winner"]
    assert rungs[-1]["scores"][winner] == min(rungs[-1]["scores"].values())


def test_a_resumed_search_ends_where_an_uninterrupted_one_does(
    uninterrupted: dict[str, Any], tiny_file: Path, base_file: Path, tmp_path: Path
) -> None:
    options = _options(tiny_file, base_file, tmp_path / "out")
    done = 0

    def stop_after_four(planned: int) -> None:
        nonlocal done
        if not planned:
            done += 1
            if done == 4:
                raise Interrupted

    with pytest.raises(Interrupted):
        tune(options, stop_after_four)
    assert _journal_runs(tmp_path / "out") == 4

    ran: list[int] = []
    resumed = tune(options, lambda planned: ran.append(planned) if planned else None)

    assert _answer(resumed) == _answer(uninterrupted)
    assert sum(ran) == _journal_runs(tmp_path / "out") - 4  # the four journaled runs did not run again


def test_parallel_workers_give_the_same_answer(
    uninterrupted: dict[str, Any], tiny_file: Path, base_file: Path, tmp_path: Path
) -> None:
    assert _answer(tune(_options(tiny_file, base_file, tmp_path / "out", jobs=2))) == _answer(uninterrupted)
