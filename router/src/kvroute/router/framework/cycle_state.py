"""Typed per-request state shared between plugins, from `schedule()` until `on_response_complete`."""

from __future__ import annotations

from typing import Generic, TypeVar, cast

T = TypeVar("T")


class StateKey(Generic[T]):
    """A typed key; identity is the object itself, the name is for messages."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StateKey({self.name!r})"


class CycleState:
    # The casts name their types as strings: evaluating `StateKey[object]` or `T | None` on every call would cost
    # more than the dictionary access itself, and plugins read and write state several times per request.
    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[StateKey[object], object] = {}

    def write(self, key: StateKey[T], value: T) -> None:
        self._values[cast("StateKey[object]", key)] = value

    def read(self, key: StateKey[T]) -> T | None:
        return cast("T | None", self._values.get(cast("StateKey[object]", key)))

    def require(self, key: StateKey[T]) -> T:
        try:
            return cast("T", self._values[cast("StateKey[object]", key)])
        except KeyError:
            raise KeyError(f"cycle state has no {key.name!r}") from None

    def __contains__(self, key: StateKey[T]) -> bool:
        return cast("StateKey[object]", key) in self._values
