"""Small workloads and configurations for `kvroute tune`'s tests: a run takes a few tens of milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest

# 100 requests on three tiny engines, loaded enough that routing changes TTFT.
TINY = """\
name: tiny
description: a small shared-prefix workload
seed: 3
fleet: {engines: 3, profile: tiny}
arrival:
  - {process: poisson, rate: 200, count: 100}
generator: {kind: shared-prefix, groups: 8, system_tokens: 480, question_tokens: 32, output_tokens: 16}
"""

BASE = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: prefix-cache-scorer
  - type: token-load-scorer
    parameters: {queueThresholdTokens: 16384}
  - type: queue-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: prefix-cache-scorer, weight: 3}
      - {pluginRef: token-load-scorer, weight: 2}
      - {pluginRef: queue-scorer}
      - {pluginRef: max-score-picker}
"""


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture
def base_text() -> str:
    return BASE


@pytest.fixture
def base_file(tmp_path: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(BASE)
    return path
