"""Label selectors: which labels match, the query string the API server gets, and the errors for bad specs."""

from __future__ import annotations

import pytest

from kvroute.router.datalayer.kubernetes.selector import LabelSelector


def test_match_labels_require_every_pair() -> None:
    selector = LabelSelector.from_spec({"matchLabels": {"app": "llm", "tier": "gpu"}})

    assert selector.matches({"app": "llm", "tier": "gpu", "extra": "x"})
    assert not selector.matches({"app": "llm"})
    assert not selector.matches({"app": "llm", "tier": "cpu"})
    assert selector.query() == "app=llm,tier=gpu"


@pytest.mark.parametrize(
    ("expression", "labels", "expected"),
    [
        ({"key": "role", "operator": "In", "values": ["decode", "both"]}, {"role": "decode"}, True),
        ({"key": "role", "operator": "In", "values": ["decode", "both"]}, {"role": "prefill"}, False),
        ({"key": "role", "operator": "In", "values": ["decode"]}, {}, False),
        ({"key": "role", "operator": "NotIn", "values": ["prefill"]}, {"role": "decode"}, True),
        ({"key": "role", "operator": "NotIn", "values": ["prefill"]}, {}, True),
        ({"key": "role", "operator": "NotIn", "values": ["prefill"]}, {"role": "prefill"}, False),
        ({"key": "gpu", "operator": "Exists"}, {"gpu": ""}, True),
        ({"key": "gpu", "operator": "Exists"}, {}, False),
        ({"key": "canary", "operator": "DoesNotExist"}, {}, True),
        ({"key": "canary", "operator": "DoesNotExist"}, {"canary": "yes"}, False),
    ],
)
def test_match_expressions(expression: dict[str, object], labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.from_spec({"matchExpressions": [expression]}).matches(labels) is expected


def test_labels_and_expressions_combine_with_and_and_render_in_api_server_syntax() -> None:
    selector = LabelSelector.from_spec(
        {
            "matchLabels": {"app": "llm"},
            "matchExpressions": [
                {"key": "role", "operator": "In", "values": ["prefill", "decode"]},
                {"key": "zone", "operator": "NotIn", "values": ["b"]},
                {"key": "gpu", "operator": "Exists"},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }
    )

    assert selector.query() == "app=llm,!canary,gpu,role in (decode,prefill),zone notin (b)"
    assert selector.matches({"app": "llm", "role": "decode", "gpu": "h100", "zone": "a"})
    assert not selector.matches({"app": "llm", "role": "decode", "gpu": "h100", "canary": "1"})


def test_the_same_selector_written_differently_is_equal() -> None:
    one = LabelSelector.from_spec({"matchLabels": {"a": "1", "b": "2"}})
    two = LabelSelector.from_spec({"matchLabels": {"b": "2", "a": "1"}})

    assert one == two
    assert one != LabelSelector.from_spec({"matchLabels": {"a": "1"}})


def test_the_empty_selector_matches_everything() -> None:
    selector = LabelSelector.from_spec({})

    assert selector.matches({}) and selector.matches({"any": "thing"})
    assert selector.query() == ""


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"matchLabels": ["app"]}, "spec.selector.matchLabels is not an object"),
        ({"matchLabels": {"app": "a,b"}}, "spec.selector.matchLabels[app] 'a,b' is not a valid"),
        ({"matchLabels": {"a b": "x"}}, "spec.selector.matchLabels key 'a b' is not a valid"),
        ({"matchExpressions": [{"key": "k", "operator": "Near"}]}, "operator 'Near' is not one of"),
        ({"matchExpressions": [{"key": "k", "operator": "In"}]}, "operator In needs at least one value"),
        ({"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["x"]}]}, "takes no values"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "spec.selector.matchExpressions[0].key None"),
    ],
)
def test_bad_selectors_name_the_field(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        LabelSelector.from_spec(spec, "spec.selector")

    assert message in str(caught.value)
