"""Plain values that the fleet-sharing plugins (`FleetShared`) send to peers, and their checks on the way in.

Block hashes travel as 8 bytes each (native unsigned 64-bit, little-endian on every platform kvroute runs on);
everything else as lists of ints and strings. A peer's values are checked before they touch any state: a list
of the wrong shape or type raises `TypeError`, so the sync layer counts it instead of corrupting an index.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import Any

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("fleet values assume a little-endian machine")


def pack_hashes(hashes: Sequence[int]) -> bytes:
    return array("Q", hashes).tobytes()


def unpack_hashes(data: Any) -> tuple[int, ...]:
    if not isinstance(data, bytes) or len(data) % 8:
        raise TypeError("block hashes must be bytes, 8 per hash")
    return tuple(array("Q", data))


def fields(shared: Any, *kinds: type) -> list[Any]:
    """`shared` as a list of len(kinds) values of those types (a bool is not an int here)."""
    if not isinstance(shared, list | tuple) or len(shared) != len(kinds):
        raise TypeError(f"expected a list of {len(kinds)} values, got {type(shared).__name__}")
    for value, kind in zip(shared, kinds, strict=True):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return list(shared)


def endpoint_ids(value: Any) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of endpoint ids")
    return list(value)
