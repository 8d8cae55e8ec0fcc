"""The search's journal: one JSON line per finished run, so an interrupted search resumes where it stopped.

The first line identifies the search (`fingerprint`: a hash of the base configuration, the space, the cases
and the seed); a journal written for another search is refused rather than mixed in. Each further line is one
run: the policy (a trial's configuration digest, or a peer's name), the case id, and the run's metrics. Runs
are deterministic, so a run found in the journal is not run again and the resumed search ends exactly where an
uninterrupted one would. A line cut short by an interruption is ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

Key = tuple[str, str]  # (policy, case id)


class JournalError(ValueError):
    """The journal belongs to another search."""


def fingerprint(identity: Any) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class Journal:
    def __init__(self, path: Path, identity: Any) -> None:
        self.path = path
        self._fingerprint = fingerprint(identity)
        self.runs: dict[Key, dict[str, Any]] = {}
        if path.exists():
            self._read()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"fingerprint": self._fingerprint})

    def _read(self) -> None:
        text = self.path.read_text()
        if text and not text.endswith("\n"):
            self.path.write_text(text + "\n")  # the next line must not be glued to a cut one
        lines = text.splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("fingerprint") != self._fingerprint:
            raise JournalError(
                f"{self.path} was written by a different search (other base, space, workloads or seed): "
                "use another --out, or delete the journal to start over"
            )
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.runs[(entry["policy"], entry["case"])] = entry["metrics"]

    def _append(self, entry: dict[str, Any]) -> None:
        with self.path.open("a") as stream:
            stream.write(json.dumps(entry, sort_keys=True) + "\n")

    def get(self, key: Key) -> dict[str, Any] | None:
        return self.runs.get(key)

    def record(self, key: Key, metrics: dict[str, Any]) -> None:
        self.runs[key] = metrics
        self._append({"policy": key[0], "case": key[1], "metrics": metrics})
