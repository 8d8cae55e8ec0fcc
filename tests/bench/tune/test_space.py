from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvroute.bench.tune.space import SpaceError, build_space, load_space
from kvroute.router.config.recommended import recommended_config_text

LOAD_SCORERS = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: prefix-cache-scorer
  - type: token-load-scorer
    parameters: {queueThresholdTokens: 16384}
  - type: active-blocks-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: prefix-cache-scorer, weight: 3}
      - {pluginRef: token-load-scorer, weight: 2}
      - {pluginRef: active-blocks-scorer, weight: 1}
      - {pluginRef: max-score-picker}
"""


def test_derived_from_the_recommended_configuration() -> None:
    space = build_space(recommended_config_text())

    dims = {d.name: d for d in space.dimensions}
    assert list(dims) == [
        "default/predicted-latency-scorer",
        "default/no-hit-lru-scorer",
        "default/lora-affinity-scorer",
        "predicted-latency-scorer.capacityCharge",
        "predicted-latency-scorer.arrivalCharge",
        "predicted-latency-scorer.kvWaitCharge",
    ]
    latency = dims["default/predicted-latency-scorer"]
    assert (latency.base, latency.range.low, latency.range.high, latency.range.log) == (1.0, 0.25, 4.0, True)
    assert latency.range.zero > 0  # dropping a scorer is part of the space
    charge = dims["predicted-latency-scorer.capacityCharge"]
    assert (charge.base, charge.range.low, charge.range.high) == (0.5, 0.0, 4.0)


def test_a_parameter_the_base_leaves_at_its_default_is_searched_from_the_plugins_default() -> None:
    space = build_space(LOAD_SCORERS)

    dims = {d.name: d for d in space.dimensions}
    threshold = dims["token-load-scorer.queueThresholdTokens"]
    assert (threshold.base, threshold.range.integer) == (16384, True)
    assert dims["active-blocks-scorer.overlapWeight"].base == 1.0  # the plugin's default: the base sets none


def test_pd_weights_per_profile() -> None:
    space = build_space(recommended_config_text(disaggregated=True))

    names = {d.name for d in space.dimensions}
    assert {"decode/decode-latency", "prefill/prefill-latency", "prefill/no-hit-lru-scorer"} <= names
    assert {"decode-latency.capacityCharge", "prefill-latency.arrivalCharge"} <= names
    assert not any(name.endswith("-filter") or name.endswith("-picker") for name in names)


def test_apply_writes_weights_and_parameters(base_text: str) -> None:
    space = build_space(base_text)

    document = space.apply({"default/queue-scorer": 0, "token-load-scorer.queueThresholdTokens": 4096})

    refs = {r["pluginRef"]: r.get("weight") for r in document["schedulingProfiles"][0]["plugins"]}
    assert refs == {"prefix-cache-scorer": 3, "token-load-scorer": 2, "queue-scorer": 0, "max-score-picker": None}
    assert document["plugins"][1]["parameters"] == {"queueThresholdTokens": 4096}
    assert space.document["plugins"][1]["parameters"] == {"queueThresholdTokens": 16384}  # the base is untouched


def test_a_space_file_overrides_and_adds(base_text: str) -> None:
    text = """
weights:
  default/queue-scorer: {choices: [0, 1, 2]}
parameters:
  max-score-picker:
    maxNumOfEndpoints: {low: 1, high: 3, integer: true}
"""
    dims = {d.name: d for d in build_space(base_text, text, "space.yaml").dimensions}

    assert dims["default/queue-scorer"].range.choices == (0, 1, 2)
    assert dims["max-score-picker.maxNumOfEndpoints"].base == 1
    assert "default/prefix-cache-scorer" in dims


def test_derive_false_is_the_listed_space_only(base_text: str) -> None:
    text = "derive: false\nweights:\n  default/prefix-cache-scorer: {low: 1, high: 5}\n"

    assert [d.name for d in build_space(base_text, text, "s.yaml").dimensions] == ["default/prefix-cache-scorer"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("weights:\n  queue-scorer: {low: 1, high: 2}\n", "s.yaml: weights.queue-scorer: a weight is named PROFILE/"),
        ("weights:\n  decode/queue-scorer: {low: 1, high: 2}\n", 'no scheduling profile "decode"'.replace('"', "'")),
        (
            "weights:\n  default/foo: {low: 1, high: 2}\n",
            "s.yaml: weights.default/foo: profile 'default' has no pluginRef",
        ),
        ("parameters:\n  foo:\n    x: {low: 1, high: 2}\n", "s.yaml: parameters.foo: no plugin named 'foo'"),
        ("weights:\n  default/queue-scorer: {low: 5, high: 1}\n", "weights.default/queue-scorer: low (5.0) is above"),
        ("weights:\n  default/queue-scorer: {low: 0, high: 1, log: true}\n", "a log range needs low > 0"),
        ("weights:\n  default/queue-scorer: {low: 1}\n", "a range needs low and high"),
        (
            "weights:\n  default/queue-scorer: {low: 1, high: 2, steps: 3}\n",
            "s.yaml: weights.default/queue-scorer.steps",
        ),
        (
            "parameters:\n  token-load-scorer:\n    queueThresholdTokens: {low: 0, high: 10, integer: true}\n",
            "s.yaml: token-load-scorer.queueThresholdTokens: the value 0 is rejected",
        ),
        (
            "parameters:\n  queue-scorer:\n    depth: {choices: [1]}\n",
            "s.yaml: queue-scorer.depth: the value 1 is rejected",
        ),
        ("derive: false\n", "s.yaml: the search space is empty"),
        ("[1, 2]\n", "s.yaml: a search space is a mapping"),
        ("weights: {\n", "s.yaml: invalid YAML"),
    ],
)
def test_invalid_spaces_name_the_file_and_the_entry(base_text: str, text: str, message: str) -> None:
    with pytest.raises(SpaceError) as caught:
        build_space(base_text, text, "s.yaml")

    assert message in str(caught.value)


def test_an_invalid_base_is_reported_as_such() -> None:
    base = yaml.safe_dump(
        {"apiVersion": "kvroute.io/v1alpha1", "kind": "EndpointPickerConfig", "plugins": [{"type": "nope"}]}
    )

    with pytest.raises(SpaceError, match=r"base configuration: .*nope"):
        build_space(base)


def test_a_missing_space_file_is_named(base_text: str, tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"missing\.yaml: cannot read"):
        load_space(base_text, tmp_path / "missing.yaml")
