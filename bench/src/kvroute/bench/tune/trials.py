"""Candidate configurations: trial `i` of a search is a pure function of (space, seed, i).

Trial 0 is the base configuration itself. Odd trials draw every dimension anywhere in its range (exploration:
far from the base, where hand-picked weights may have missed a better region); even trials nudge a few
dimensions of the base (exploitation: small moves around a configuration that is already reasonable). Each
trial has its own generator, seeded from the string `"<seed>:<i>"`, so a trial's values depend neither on the
other trials nor on how many there are: extending `--trials` keeps the trials already run.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from kvroute.bench.tune.space import Point, Space

# Share of dimensions a nudged trial moves (at least one moves).
NUDGE_SHARE = 0.35


@dataclass(frozen=True)
class Trial:
    index: int
    point: Point
    text: str  # the EndpointPickerConfig document

    @property
    def name(self) -> str:
        return f"trial-{self.index:03d}"

    @property
    def digest(self) -> str:
        """Identifies the configuration in the journal (two trials with one configuration run once)."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def sample_point(space: Space, seed: int, index: int) -> Point:
    base = space.base_point()
    if index == 0:
        return base
    rng = random.Random(f"{seed}:{index}")
    dims = space.dimensions
    if index % 2:
        return {d.name: d.range.draw(rng) for d in dims}
    moved = {d.name for d in dims if rng.random() < NUDGE_SHARE} or {dims[rng.randrange(len(dims))].name}
    return {d.name: d.range.nudge(rng, d.base) if d.name in moved else d.base for d in dims}


def make_trial(space: Space, seed: int, index: int) -> Trial:
    point = sample_point(space, seed, index)
    return Trial(index, point, yaml.safe_dump(space.apply(point), sort_keys=False))


def write_trial(trial: Trial, directory: Path) -> Path:
    """The trial's configuration as `DIRECTORY/trial-NNN.yaml` (worker processes load it from there)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{trial.name}.yaml"
    if not path.exists() or path.read_text() != trial.text:
        path.write_text(trial.text)
    return path
