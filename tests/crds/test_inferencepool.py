"""The InferencePool CRD kvroute ships (crds/inferencepool.yaml) against the upstream API's facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import yaml

from kvroute.operator.models import InferencePoolSpec

CRD = Path(__file__).resolve().parents[2] / "crds" / "inferencepool.yaml"


def _crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    return crd


def _spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def _evaluate(rule: str, value: Any) -> bool:
    env = celpy.Environment()
    return bool(env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(value)}))


def test_identity() -> None:
    crd = _crd()
    assert crd["metadata"]["name"] == "inferencepools.inference.networking.k8s.io"
    assert "api-approved.kubernetes.io" in crd["metadata"]["annotations"]  # required for a *.k8s.io group
    spec = crd["spec"]
    assert spec["group"] == "inference.networking.k8s.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "InferencePool"
    assert spec["names"]["shortNames"] == ["infpool"]
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Endpoint Picker", "Ports", "Age"]


def test_spec_fields() -> None:
    spec = _spec_schema()
    assert spec["required"] == ["selector", "targetPorts"]  # endpointPickerRef is optional
    labels = spec["properties"]["selector"]["properties"]["matchLabels"]
    assert (labels["minProperties"], labels["maxProperties"]) == (1, 64)
    ports = spec["properties"]["targetPorts"]
    assert (ports["minItems"], ports["maxItems"], ports["x-kubernetes-list-type"]) == (1, 8, "atomic")
    number = ports["items"]["properties"]["number"]
    assert (number["minimum"], number["maximum"]) == (1, 65535)
    assert spec["properties"]["appProtocol"]["enum"] == ["http", "kubernetes.io/h2c"]
    ref = spec["properties"]["endpointPickerRef"]
    assert ref["required"] == ["name"]
    assert ref["properties"]["kind"]["default"] == "Service"
    assert ref["properties"]["failureMode"]["enum"] == ["FailOpen", "FailClose"]
    assert ref["properties"]["failureMode"]["default"] == "FailClose"


def test_target_ports_must_be_unique() -> None:
    [rule] = _spec_schema()["properties"]["targetPorts"]["x-kubernetes-validations"]
    assert _evaluate(rule["rule"], [{"number": 8000}, {"number": 8001}])
    assert not _evaluate(rule["rule"], [{"number": 8000}, {"number": 8000}])


def test_a_service_picker_needs_a_port() -> None:
    [rule] = _spec_schema()["properties"]["endpointPickerRef"]["x-kubernetes-validations"]
    assert _evaluate(rule["rule"], {"kind": "Service", "name": "epp", "port": {"number": 9002}})
    assert not _evaluate(rule["rule"], {"kind": "Service", "name": "epp"})
    assert _evaluate(rule["rule"], {"kind": "Other", "name": "epp"})


def test_status_parents_and_conditions() -> None:
    status = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    parents = status["properties"]["parents"]
    assert parents["maxItems"] == 32
    conditions = parents["items"]["properties"]["conditions"]
    assert conditions["maxItems"] == 8
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert parents["items"]["properties"]["parentRef"]["properties"]["kind"]["default"] == "Gateway"


def test_the_operator_reads_a_pool_of_this_schema() -> None:
    spec = InferencePoolSpec.model_validate(
        {
            "selector": {"matchLabels": {"app": "vllm"}},
            "targetPorts": [{"number": 8000}, {"number": 8001}],
            "appProtocol": "http",
            "endpointPickerRef": {"name": "epp", "port": {"number": 9002}, "failureMode": "FailOpen"},
        }
    )
    assert spec.endpoint_picker_ref is not None
    assert spec.endpoint_picker_ref.is_service
    assert [p.number for p in spec.target_ports] == [8000, 8001]
