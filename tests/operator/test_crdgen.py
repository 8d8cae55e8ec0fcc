from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from kvroute.operator.crdgen import main, render_yaml, scheduling_profile_crd

from .conftest import profile_spec

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "crds" / "schedulingprofile.yaml"


def _schema() -> dict[str, Any]:
    crd = scheduling_profile_crd()
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _nodes(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), Mapping):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = _schema()["properties"]["spec"]["x-kubernetes-validations"]
    return rules


def _failed_rules(spec: Mapping[str, Any]) -> list[str]:
    env = celpy.Environment()
    failed = []
    for rule in _rules():
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(spec)}):
            failed.append(rule["message"])
    return failed


def test_committed_crd_is_generated_from_the_models() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render_yaml(scheduling_profile_crd()), (
        "crds/schedulingprofile.yaml is out of date: run python -m kvroute.operator.crdgen crds/"
    )
    assert main([str(COMMITTED.parent), "--check"]) == 0


def test_check_reports_an_outdated_file(tmp_path: Path) -> None:
    (tmp_path / "schedulingprofile.yaml").write_text("old", encoding="utf-8")
    assert main([str(tmp_path), "--check"]) == 1
    assert main([str(tmp_path)]) == 0
    assert main([str(tmp_path), "--check"]) == 0


def test_names_scope_status_and_printer_columns() -> None:
    crd = scheduling_profile_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "schedulingprofiles.kvroute.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["schedprof"]
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c] == [
        "Pool",
        "Accepted",
        "Ready",
        "Age",
    ]
    assert columns["Accepted"]["jsonPath"] == '.status.conditions[?(@.type=="Accepted")].status'


def test_spec_schema_comes_from_the_router_models() -> None:
    spec = _schema()["properties"]["spec"]
    assert spec["required"] == ["poolRef"]
    plugin = spec["properties"]["plugins"]["items"]
    assert plugin["required"] == ["type"]
    assert plugin["properties"]["parameters"] == {
        "description": "Validated by the plugin type's Params.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    metrics = spec["properties"]["metrics"]["properties"]
    assert metrics["engine"]["enum"] == ["vllm", "sglang", "trtllm"]
    assert metrics["scrapeInterval"]["description"] == "Default: 50ms."
    router = spec["properties"]["router"]["properties"]
    assert router["mode"]["enum"] == ["ext-proc", "proxy"]
    assert router["replicas"]["minimum"] == 0


def test_schema_is_structural() -> None:
    for path, node in _nodes(_schema()):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert "$ref" not in node and "title" not in node and "default" not in node, path
        assert node.get("additionalProperties") is not False, path
        if not path.startswith(".spec"):
            continue  # the CEL rules read the spec only
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: CEL cost needs a bound"
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path}: CEL cost needs a bound"


def test_status_conditions_are_a_map_keyed_by_type() -> None:
    conditions = _schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(_schema()["properties"]["status"]["properties"]) == {
        "observedGeneration",
        "configHash",
        "routerDeployment",
        "readyReplicas",
        "objectives",
        "objectiveCount",
        "conditions",
    }


def test_status_objectives_are_a_bounded_map_keyed_by_name() -> None:
    objectives = _schema()["properties"]["status"]["properties"]["objectives"]
    assert (objectives["x-kubernetes-list-type"], objectives["x-kubernetes-list-map-keys"]) == ("map", ["name"])
    assert objectives["maxItems"] == 64
    assert objectives["items"]["required"] == ["name", "priority"]
    assert objectives["items"]["properties"]["priority"]["type"] == "integer"


def test_cel_rules_accept_a_valid_spec() -> None:
    spec = profile_spec()
    spec["plugins"].append({"name": "detector", "type": "utilization-detector"})
    spec["saturationDetector"] = {"pluginRef": "detector"}
    assert _failed_rules(spec) == []
    assert _failed_rules({"poolRef": {"name": "llama"}}) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s["schedulingProfiles"][0]["plugins"].append({"pluginRef": "nope"}),
            "every schedulingProfiles[].plugins[].pluginRef must name a plugin of spec.plugins",
        ),
        (lambda s: s["plugins"].append({"type": "queue-scorer"}), "plugin names must be unique"),
        (
            lambda s: s["plugins"].append({"name": "queue-scorer", "type": "kv-cache-utilization-scorer"}),
            "plugin names must be unique",
        ),
        (lambda s: s["schedulingProfiles"].append({"name": "default"}), "scheduling profile names must be unique"),
        (
            lambda s: s.update(saturationDetector={"pluginRef": "nope"}),
            "saturationDetector.pluginRef must name a plugin of spec.plugins",
        ),
        (
            lambda s: s.pop("plugins"),
            "every schedulingProfiles[].plugins[].pluginRef must name a plugin of spec.plugins",
        ),
    ],
)
def test_cel_rules_reject(change: Any, message: str) -> None:
    spec = profile_spec()
    change(spec)
    failed = _failed_rules(spec)
    assert len(failed) == 1
    assert failed[0].startswith(message)


def test_committed_file_parses_as_yaml() -> None:
    assert yaml.safe_load(COMMITTED.read_text(encoding="utf-8")) == scheduling_profile_crd()
