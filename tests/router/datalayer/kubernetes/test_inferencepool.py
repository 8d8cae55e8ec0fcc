"""Reading an InferencePool: selector and target ports, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from kvroute.router.datalayer.kubernetes.inferencepool import parse_pool, pools_path
from kvroute.router.datalayer.kubernetes.selector import LabelSelector


def test_selector_and_target_ports_are_read(make_pool: Any) -> None:
    spec = parse_pool(make_pool(match_labels={"app": "llm", "model": "llama"}, ports=(8000, 8001)))

    assert spec.selector == LabelSelector.from_spec({"matchLabels": {"app": "llm", "model": "llama"}})
    assert spec.target_ports == (8000, 8001)


def test_the_collection_path_is_the_v1_api_group() -> None:
    assert pools_path("team-a") == "/apis/inference.networking.k8s.io/v1/namespaces/team-a/inferencepools"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop("spec"), "spec is missing"),
        (lambda p: p["spec"].pop("selector"), "spec.selector is missing"),
        (lambda p: p["spec"].update(targetPorts=[]), "spec.targetPorts must list at least one port"),
        (lambda p: p["spec"].update(targetPorts=[{"number": 0}]), "spec.targetPorts[0].number must be an integer"),
        (lambda p: p["spec"].update(targetPorts=[{"number": "80"}]), "spec.targetPorts[0].number must be an"),
        (lambda p: p["spec"].update(targetPorts=[{"number": 80}, {"number": 80}]), "[1].number 80 is listed twice"),
        (lambda p: p["spec"].update(selector={"matchLabels": {"a": "b c"}}), "spec.selector.matchLabels[a]"),
    ],
)
def test_an_unreadable_spec_names_the_field(make_pool: Any, change: Any, message: str) -> None:
    pool = make_pool()
    change(pool)

    with pytest.raises(ValueError) as caught:
        parse_pool(pool)

    assert message in str(caught.value)
