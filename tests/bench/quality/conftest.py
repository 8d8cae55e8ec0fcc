"""Small workloads for the quality benchmark's tests: each runs in well under a second."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kvroute.bench.quality.generators import Workload, build
from kvroute.bench.quality.workloads import WorkloadSpec, parse_workload
from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.engine.request import EngineRequest

TINY = """\
name: tiny
description: a small shared-prefix workload
seed: 3
fleet: {engines: 3, profile: tiny}
arrival:
  - {process: poisson, rate: 30, count: 60}
generator: {kind: shared-prefix, groups: 4, system_tokens: 160, question_tokens: 16, output_tokens: 6}
"""

TINY_PD = """\
name: tiny-pd
description: a small P/D workload
fleet: {engines: 4, profile: tiny, prefill_engines: 2}
arrival:
  - {process: poisson, rate: 30, count: 40}
generator: {kind: shared-prefix, groups: 3, system_tokens: 160, question_tokens: 40, output_tokens: 6}
"""


@pytest.fixture
def tiny_text() -> str:
    return TINY


@pytest.fixture
def tiny_spec() -> WorkloadSpec:
    return parse_workload(TINY)


@pytest.fixture
def tiny(tiny_spec: WorkloadSpec) -> Workload:
    return build(tiny_spec, 0)


@pytest.fixture
def tiny_pd() -> Workload:
    return build(parse_workload(TINY_PD), 0)


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def warm(engine: Engine, token_ids: list[int], request_id: str) -> None:
    """Run one request through `engine` to completion, leaving its prompt blocks in the prefix cache."""
    engine.add_request(EngineRequest(request_id, token_ids, max_tokens=1))
    now = 0.0
    while engine.has_work():
        now += engine.step(now).duration


@pytest.fixture
def warmed() -> Callable[[Engine, list[int], str], None]:
    return warm
