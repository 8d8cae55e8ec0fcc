"""`label-selector-filter`: keep the endpoints whose pod labels match a Kubernetes-style label selector.

Parameters (both optional; all requirements must hold, and an empty selector keeps every endpoint):

- `matchLabels: {key: value}`: the label `key` is present and equals `value`.
- `matchExpressions: [{key, operator, values}]` with the Kubernetes meanings:
  - `In`: the label is present and its value is one of `values` (non-empty);
  - `NotIn`: the label is absent, or its value is none of `values` (non-empty);
  - `Exists` / `DoesNotExist`: the label is present / absent (`values` must be empty).

Two older forms are registered under their own type names:

- `by-label-selector`: `matchLabels` only.
- `by-label`: `label`, `validValues`, `allowsNoLabel` (default false): keep an endpoint whose `label` value is one
  of `validValues`; an endpoint without the label is kept only when `allowsNoLabel` is true.

No endpoint matching is a valid outcome: the filter returns an empty list and the profile has no endpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum

from pydantic import Field, model_validator

from kvroute.router.framework import CycleState, Endpoint, Filter, LLMRequest
from kvroute.router.plugins.params import PluginParams


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelExpression(PluginParams):
    """One requirement of `matchExpressions`."""

    key: str = Field(min_length=1)
    operator: Operator
    values: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelExpression:
        needs_values = self.operator in (Operator.IN, Operator.NOT_IN)
        if needs_values and not self.values:
            raise ValueError(f"operator {self.operator} needs a non-empty 'values'")
        if not needs_values and self.values:
            raise ValueError(f"operator {self.operator} takes no 'values'")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.operator is Operator.IN:
            return value is not None and value in self.values
        if self.operator is Operator.NOT_IN:
            return value is None or value not in self.values
        if self.operator is Operator.EXISTS:
            return value is not None
        return value is None


class LabelSelectorFilter(Filter):
    type_name = "label-selector-filter"

    class Params(PluginParams):
        match_labels: dict[str, str] = Field(default_factory=dict)
        match_expressions: tuple[LabelExpression, ...] = Field(default=())

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self._expressions = _expressions(params.match_labels, params.match_expressions)

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if self.matches(e.labels)]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(expression.matches(labels) for expression in self._expressions)


def _expressions(
    match_labels: Mapping[str, str], match_expressions: Sequence[LabelExpression]
) -> tuple[LabelExpression, ...]:
    equalities = (LabelExpression(key=k, operator=Operator.IN, values=(v,)) for k, v in match_labels.items())
    return (*equalities, *match_expressions)


class ByLabelSelectorFilter(LabelSelectorFilter):
    type_name = "by-label-selector"

    class Params(PluginParams):
        match_labels: dict[str, str] = Field(default_factory=dict)

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, LabelSelectorFilter.Params(match_labels=params.match_labels))
        self.params = params


class ByLabelFilter(Filter):
    type_name = "by-label"

    class Params(PluginParams):
        label: str = Field(min_length=1)
        valid_values: tuple[str, ...] = Field(default=())
        allows_no_label: bool = Field(default=False)

    def __init__(self, name: str, params: Params) -> None:
        super().__init__(name, params)
        self._label = params.label
        self._valid_values = frozenset(params.valid_values)
        self._allows_no_label = params.allows_no_label

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if self.matches(e.labels)]

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self._label)
        if value is None:
            return self._allows_no_label
        return value in self._valid_values
