"""Kubernetes label selectors: `matchLabels` and `matchExpressions`, matched locally and sent to the API server.

A selector is a conjunction of requirements. `matchLabels: {k: v}` is `k In (v)`; `matchExpressions` entries are
`{key, operator, values}` with operators `In` and `NotIn` (non-empty `values`), `Exists` and `DoesNotExist` (no
`values`). The empty selector matches every pod. InferencePool v1 itself only allows `matchLabels`; expressions
are accepted so that the same code serves any pod selector.

`query()` renders the API server's `labelSelector` syntax (`k=v,k in (a,b),k notin (c),k,!k`); `matches()`
applies the same rules to a pod's labels, so pods the server sent under an older selector can be filtered out
while the watch restarts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
# Only characters a label key or value may contain, so that nothing can change the meaning of the query string.
_LABEL_TEXT = re.compile(r"[A-Za-z0-9._/-]*")


@dataclass(frozen=True, slots=True, order=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        present = self.key in labels and labels[self.key] in self.values
        return present if self.operator == "In" else not present

    def query(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        if self.operator == "In" and len(self.values) == 1:
            return f"{self.key}={self.values[0]}"
        word = "in" if self.operator == "In" else "notin"
        return f"{self.key} {word} ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def from_spec(cls, spec: Any, where: str = "selector") -> LabelSelector:
        """Parse a `LabelSelector` object; raises `ValueError` naming the field at fault."""
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where} is not an object")
        requirements: list[Requirement] = []
        match_labels = spec.get("matchLabels") or {}
        if not isinstance(match_labels, Mapping):
            raise ValueError(f"{where}.matchLabels is not an object")
        for key, value in match_labels.items():
            _check(key, f"{where}.matchLabels key")
            _check(value, f"{where}.matchLabels[{key}]", allow_empty=True)
            requirements.append(Requirement(key, "In", (value,)))
        expressions = spec.get("matchExpressions") or []
        if not isinstance(expressions, list):
            raise ValueError(f"{where}.matchExpressions is not a list")
        for index, expression in enumerate(expressions):
            requirements.append(_expression(expression, f"{where}.matchExpressions[{index}]"))
        return cls(tuple(sorted(requirements)))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    def query(self) -> str:
        """The `labelSelector` query parameter; empty for the selector that matches everything."""
        return ",".join(requirement.query() for requirement in self.requirements)

    def __str__(self) -> str:
        return self.query() or "<everything>"


def _expression(expression: Any, where: str) -> Requirement:
    if not isinstance(expression, Mapping):
        raise ValueError(f"{where} is not an object")
    key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
    _check(key, f"{where}.key")
    if operator not in OPERATORS:
        raise ValueError(f"{where}.operator {operator!r} is not one of {', '.join(OPERATORS)}")
    if not isinstance(values, list):
        raise ValueError(f"{where}.values is not a list")
    for value in values:
        _check(value, f"{where}.values", allow_empty=True)
    if operator in ("In", "NotIn") and not values:
        raise ValueError(f"{where}: operator {operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise ValueError(f"{where}: operator {operator} takes no values")
    return Requirement(str(key), operator, tuple(sorted(set(values))))


def _check(text: Any, where: str, *, allow_empty: bool = False) -> None:
    if not isinstance(text, str) or (not text and not allow_empty) or not _LABEL_TEXT.fullmatch(text):
        raise ValueError(f"{where} {text!r} is not a valid label key or value")
