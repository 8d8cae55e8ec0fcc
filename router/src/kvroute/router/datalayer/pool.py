"""The endpoint pool: the current set of endpoints, swapped atomically, and the subscribers told of changes.

Contract:

- `snapshot()` returns an immutable tuple; a scheduling cycle reads it once and keeps using it even if the set
  changes meanwhile. It costs one attribute read.
- `set_endpoints()` replaces the whole set. An endpoint whose id (`ip:port`) is already present and whose
  identity fields (pod name, namespace, labels) are unchanged keeps its `Endpoint` object, so the metrics scraped
  into it survive. If those fields changed, a new object replaces the old one and carries its metrics over.
- After the new snapshot is in place, every subscriber is called synchronously, in subscription order, with a
  `PoolChange` (`added`, `removed`, `updated`), only when something changed. Subscribers run on the caller's
  thread, which must be the event loop's: they may start or cancel tasks, and must not block or await. Plugins
  holding per-endpoint state purge `change.removed` here. A subscriber that raises is logged and the others still
  run. A removed endpoint may come back later under the same id as a new object with fresh (stale) metrics.
- Holders of an `Endpoint` from an older snapshot may still write its `metrics`; writers that outlive a cycle (the
  scraper) look the endpoint up again by id with `get()` so they always write to the current object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from kvroute.router.framework.endpoint import Endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PoolChange:
    added: tuple[Endpoint, ...] = ()
    removed: tuple[Endpoint, ...] = ()
    updated: tuple[Endpoint, ...] = ()  # the new objects of endpoints whose pod name, namespace or labels changed

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)


PoolListener = Callable[[PoolChange], None]


class EndpointPool:
    def __init__(self, endpoints: Iterable[Endpoint] = ()) -> None:
        self._snapshot: tuple[Endpoint, ...] = ()
        self._by_id: dict[str, Endpoint] = {}
        self._listeners: list[PoolListener] = []
        self.set_endpoints(endpoints)

    def snapshot(self) -> tuple[Endpoint, ...]:
        return self._snapshot

    def get(self, endpoint_id: str) -> Endpoint | None:
        return self._by_id.get(endpoint_id)

    def by_id(self) -> Mapping[str, Endpoint]:
        """The current endpoints by id (read only; a later change of the pool is not reflected)."""
        return MappingProxyType(self._by_id)

    def __len__(self) -> int:
        return len(self._snapshot)

    def subscribe(self, listener: PoolListener) -> Callable[[], None]:
        """Call `listener` on every later change; returns a function that unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> PoolChange:
        """Make `endpoints` the pool, in that order; raises `ValueError` if an id appears twice."""
        new_by_id: dict[str, Endpoint] = {}
        added: list[Endpoint] = []
        updated: list[Endpoint] = []
        for given in endpoints:
            if given.id in new_by_id:
                raise ValueError(f"endpoint {given.id} appears twice in the new endpoint set")
            current = self._by_id.get(given.id)
            if current is None:
                added.append(given)
                new_by_id[given.id] = given
            elif _same_identity(current, given):
                new_by_id[given.id] = current
            else:
                given.metrics = current.metrics
                updated.append(given)
                new_by_id[given.id] = given
        removed = tuple(e for e in self._snapshot if e.id not in new_by_id)
        self._by_id = new_by_id
        self._snapshot = tuple(new_by_id.values())
        change = PoolChange(added=tuple(added), removed=removed, updated=tuple(updated))
        if change:
            self._notify(change)
        return change

    def _notify(self, change: PoolChange) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("endpoint pool subscriber %r failed", listener)


def _same_identity(a: Endpoint, b: Endpoint) -> bool:
    return (
        a.address == b.address
        and a.port == b.port
        and a.pod_name == b.pod_name
        and a.namespace == b.namespace
        and dict(a.labels) == dict(b.labels)
    )
