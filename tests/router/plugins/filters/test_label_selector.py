import pydantic
import pytest

from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest
from kvroute.router.plugins.filters.label_selector import ByLabelFilter, ByLabelSelectorFilter, LabelSelectorFilter

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})

GPU_A100_ZONE_A = Endpoint.create("10.0.0.1", 8000, labels={"gpu": "a100", "zone": "a"})
GPU_H100_ZONE_B = Endpoint.create("10.0.0.2", 8000, labels={"gpu": "h100", "zone": "b", "canary": "true"})
GPU_L4 = Endpoint.create("10.0.0.3", 8000, labels={"gpu": "l4"})
UNLABELED = Endpoint.create("10.0.0.4", 8000)
POOL = [GPU_A100_ZONE_A, GPU_H100_ZONE_B, GPU_L4, UNLABELED]


def kept(plugin: LabelSelectorFilter | ByLabelFilter) -> list[Endpoint]:
    return plugin.filter(CycleState(), REQUEST, POOL)


def selector(params: dict[str, object]) -> LabelSelectorFilter:
    return LabelSelectorFilter("sel", LabelSelectorFilter.Params.model_validate(params))


def test_empty_selector_keeps_everything() -> None:
    assert kept(selector({})) == POOL


def test_match_labels_need_every_pair() -> None:
    assert kept(selector({"matchLabels": {"gpu": "h100"}})) == [GPU_H100_ZONE_B]
    assert kept(selector({"matchLabels": {"gpu": "h100", "zone": "a"}})) == []


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"key": "gpu", "operator": "In", "values": ["a100", "l4"]}, [GPU_A100_ZONE_A, GPU_L4]),
        # NotIn also keeps endpoints without the label, as in Kubernetes.
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, [GPU_H100_ZONE_B, GPU_L4, UNLABELED]),
        ({"key": "canary", "operator": "Exists"}, [GPU_H100_ZONE_B]),
        ({"key": "zone", "operator": "DoesNotExist"}, [GPU_L4, UNLABELED]),
    ],
)
def test_match_expression_operators(expression: dict[str, object], expected: list[Endpoint]) -> None:
    assert kept(selector({"matchExpressions": [expression]})) == expected


def test_labels_and_expressions_must_all_hold() -> None:
    params = {
        "matchLabels": {"gpu": "h100"},
        "matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}],
    }
    assert kept(selector(params)) == []


@pytest.mark.parametrize(
    "expression",
    [
        {"key": "gpu", "operator": "In", "values": []},
        {"key": "gpu", "operator": "NotIn"},
        {"key": "gpu", "operator": "Exists", "values": ["x"]},
        {"key": "gpu", "operator": "Equals", "values": ["x"]},
        {"key": "gpu", "operator": "In", "values": ["x"], "extra": 1},
    ],
)
def test_invalid_expressions_are_rejected(expression: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        LabelSelectorFilter.Params.model_validate({"matchExpressions": [expression]})


def test_by_label_selector_takes_match_labels_only() -> None:
    plugin = ByLabelSelectorFilter("old", ByLabelSelectorFilter.Params.model_validate({"matchLabels": {"gpu": "l4"}}))
    assert kept(plugin) == [GPU_L4]
    with pytest.raises(pydantic.ValidationError):
        ByLabelSelectorFilter.Params.model_validate({"matchExpressions": []})


def test_by_label_valid_values_and_allows_no_label() -> None:
    strict = ByLabelFilter("b", ByLabelFilter.Params.model_validate({"label": "zone", "validValues": ["b"]}))
    assert kept(strict) == [GPU_H100_ZONE_B]
    lenient = ByLabelFilter(
        "b", ByLabelFilter.Params.model_validate({"label": "zone", "validValues": ["b"], "allowsNoLabel": True})
    )
    assert kept(lenient) == [GPU_H100_ZONE_B, GPU_L4, UNLABELED]


def test_by_label_requires_the_label_name() -> None:
    with pytest.raises(pydantic.ValidationError):
        ByLabelFilter.Params.model_validate({"validValues": ["b"]})
