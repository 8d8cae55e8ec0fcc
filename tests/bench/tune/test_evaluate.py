from __future__ import annotations

from pathlib import Path

from kvroute.bench.quality.workloads import load_workload
from kvroute.bench.tune.cases import Case
from kvroute.bench.tune.evaluate import TRIAL_NAME, Evaluator, Runnable
from kvroute.bench.tune.journal import Journal


def test_trials_share_the_random_stream_and_journaled_runs_do_not_run_again(
    tiny_file: Path, base_text: str, tmp_path: Path
) -> None:
    # One configuration in two files: under the shared trial name, the same tie-breaks, the same result.
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(base_text)
    second.write_text(base_text)
    case = Case("tiny@0", load_workload(tiny_file), 0, "train")
    progress: list[int] = []
    evaluator = Evaluator(Journal(tmp_path / "journal.jsonl", {}), progress=progress.append)

    evaluator.run([(Runnable("a", str(first), TRIAL_NAME), case), (Runnable("b", str(second), TRIAL_NAME), case)])

    assert evaluator.metrics("a", case) == evaluator.metrics("b", case)
    assert progress == [2, 0, 0]
    evaluator.run([(Runnable("a", str(first), TRIAL_NAME), case)])
    assert progress == [2, 0, 0]  # nothing ran
    assert Journal(tmp_path / "journal.jsonl", {}).get(("a", "tiny@0")) == evaluator.metrics("a", case)
