from __future__ import annotations

from pathlib import Path

import pytest

from kvroute.bench.tune.journal import Journal, JournalError


def test_runs_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, {"seed": 1})
    journal.record(("config:abc", "tiny@0"), {"ttft_p90_s": 0.5})

    again = Journal(path, {"seed": 1})

    assert again.get(("config:abc", "tiny@0")) == {"ttft_p90_s": 0.5}
    assert again.get(("config:abc", "tiny@1")) is None


def test_a_line_cut_short_is_ignored_and_not_glued_to_the_next(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    Journal(path, {"seed": 1}).record(("peer:x", "a@0"), {"v": 1})
    with path.open("a") as stream:
        stream.write('{"policy": "peer:x", "case": "a@1", "metr')

    journal = Journal(path, {"seed": 1})
    journal.record(("peer:x", "a@2"), {"v": 3})

    assert set(Journal(path, {"seed": 1}).runs) == {("peer:x", "a@0"), ("peer:x", "a@2")}


def test_a_journal_of_another_search_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    Journal(path, {"seed": 1})

    with pytest.raises(JournalError, match=r"journal\.jsonl was written by a different search"):
        Journal(path, {"seed": 2})
