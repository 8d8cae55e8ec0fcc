"""The example objects docs/kubernetes.md applies (examples/) are valid: each matches its CRD's schema (crds/, the
source of truth), and the SchedulingProfile's scheduling sections load in the router exactly as its ConfigMap will.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kvroute.router.config.loader import load_config
from kvroute.router.plugins.registry import REGISTRY

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "InferencePool": REPO / "examples" / "inferencepool.yaml",
    "SchedulingProfile": REPO / "examples" / "schedulingprofile.yaml",
}
# The SchedulingProfile spec's sections that make up the router's EndpointPickerConfig (DESIGN §8).
CONFIG_SECTIONS = ("plugins", "schedulingProfiles", "saturationDetector", "metrics", "admission")


def crd_schema(kind: str, api_version: str) -> dict[str, Any]:
    group, _, version = api_version.rpartition("/")
    for path in sorted((REPO / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
            schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
            return schema
    raise AssertionError(f"crds/ has no CRD for {kind} ({api_version})")


@pytest.mark.parametrize("kind", EXAMPLES)
def test_example_matches_its_crd_schema(kind: str) -> None:
    example = yaml.safe_load(EXAMPLES[kind].read_text())
    assert example["kind"] == kind

    jsonschema.validate(example, crd_schema(kind, example["apiVersion"]))


def test_example_profile_and_pool_belong_together() -> None:
    pool = yaml.safe_load(EXAMPLES["InferencePool"].read_text())
    profile = yaml.safe_load(EXAMPLES["SchedulingProfile"].read_text())

    assert profile["spec"]["poolRef"]["name"] == pool["metadata"]["name"]
    assert profile["metadata"]["namespace"] == pool["metadata"]["namespace"]


def test_example_profile_loads_in_the_router() -> None:
    spec = yaml.safe_load(EXAMPLES["SchedulingProfile"].read_text())["spec"]
    document = {"apiVersion": "kvroute.io/v1alpha1", "kind": "EndpointPickerConfig"}
    document.update({key: spec[key] for key in CONFIG_SECTIONS if key in spec})

    loaded = load_config(yaml.safe_dump(document), REGISTRY)

    (profile,) = loaded.document.scheduling_profiles
    weights = {ref.plugin_ref: ref.weight for ref in profile.plugins}
    assert weights["prefix-cache-scorer"] == 3
    assert set(loaded.plugins) >= {"prefix-cache-scorer", "no-hit-lru-scorer", "max-score-picker"}
