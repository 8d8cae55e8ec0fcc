"""The files `kvroute tune` writes load where they are applied: the router's loader, the CRD's schema and rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml

from kvroute.bench.tune.outputs import scheduling_profile, write_outputs
from kvroute.router.config.loader import load_config
from kvroute.router.config.recommended import recommended_config_text
from kvroute.router.plugins.registry import REGISTRY

CRD = Path(__file__).resolve().parents[3] / "crds" / "schedulingprofile.yaml"


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _validate(manifest: dict[str, Any]) -> None:
    schema = _schema()
    jsonschema.validate(manifest, schema)
    env = celpy.Environment()
    for rule in schema["properties"]["spec"]["x-kubernetes-validations"]:
        program = env.program(env.compile(rule["rule"]))
        assert program.evaluate({"self": celpy.json_to_cel(manifest["spec"])}), rule["message"]


@pytest.mark.parametrize("disaggregated", [False, True])
def test_outputs_load_in_the_router_and_match_the_crd(tmp_path: Path, disaggregated: bool) -> None:
    text = recommended_config_text(disaggregated=disaggregated)

    config, profile = write_outputs(text, "Chosen by kvroute tune.\n\nbase", tmp_path, pool="llama", namespace="llm")

    assert config.read_text().startswith("# Chosen by kvroute tune.\n#\n# base\n")
    loaded = load_config(config.read_text(), REGISTRY)
    assert {p.name for p in loaded.document.scheduling_profiles} == (
        {"decode", "prefill"} if disaggregated else {"default"}
    )
    manifest = yaml.safe_load(profile.read_text())
    _validate(manifest)
    assert manifest["metadata"] == {"name": "llama", "namespace": "llm"}
    assert manifest["spec"]["poolRef"] == {"name": "llama"}
    assert manifest["spec"]["schedulingProfiles"] == yaml.safe_load(text)["schedulingProfiles"]


def test_the_profile_carries_only_the_scheduling_sections() -> None:
    text = recommended_config_text() + "featureGates: [x]\nmetrics: {engine: sglang}\n"

    spec = scheduling_profile(text, pool="p", namespace="n")["spec"]

    assert set(spec) == {"poolRef", "plugins", "schedulingProfiles", "metrics"}
    _validate(scheduling_profile(text, pool="p", namespace="n"))
