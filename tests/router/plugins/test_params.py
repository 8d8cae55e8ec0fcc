from __future__ import annotations

import pytest
from pydantic import Field, ValidationError

from kvroute.router.config.errors import ConfigError
from kvroute.router.config.loader import load_config
from kvroute.router.plugins.params import ParameterDoc, PluginParams, describe
from kvroute.router.plugins.pickers.softmax import SoftmaxPicker
from kvroute.router.plugins.registry import REGISTRY


class Example(PluginParams):
    queue_threshold_tokens: int = Field(default=128, gt=0, description="Tokens at which the score is 0.")
    kv_threshold: float = Field(default=0.8, alias="kvCacheUtilThreshold")
    label: str


def test_parameters_are_camel_case_in_the_document_and_snake_case_in_python() -> None:
    params = Example.model_validate({"queueThresholdTokens": 5, "kvCacheUtilThreshold": 0.5, "label": "x"})
    assert (params.queue_threshold_tokens, params.kv_threshold) == (5, 0.5)
    assert Example(queue_threshold_tokens=7, label="x").queue_threshold_tokens == 7


def test_unknown_keys_are_rejected_and_parameters_are_frozen() -> None:
    with pytest.raises(ValidationError, match="queueThreshold"):
        Example.model_validate({"queueThreshold": 5, "label": "x"})
    params = Example(label="x")
    with pytest.raises(ValidationError):
        params.label = "y"  # type: ignore[misc]


def test_describe_lists_the_fields_as_the_document_spells_them() -> None:
    assert describe(Example) == [
        ParameterDoc("queueThresholdTokens", "int", "128", "Tokens at which the score is 0."),
        ParameterDoc("kvCacheUtilThreshold", "float", "0.8", ""),
        ParameterDoc("label", "str", "required", ""),
    ]
    assert [row.name for row in describe(SoftmaxPicker.Params)] == ["maxNumOfEndpoints", "temperature"]


def test_a_bad_parameter_is_reported_under_the_plugins_path() -> None:
    text = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: softmax-picker
  parameters: {maxNumOfEndpoints: 0, temprature: 1}
"""
    with pytest.raises(ConfigError) as error:
        load_config(text, REGISTRY)
    assert error.value.errors == (
        "plugins[1].parameters.maxNumOfEndpoints: Input should be greater than or equal to 1",
        "plugins[1].parameters.temprature: Extra inputs are not permitted",
    )
