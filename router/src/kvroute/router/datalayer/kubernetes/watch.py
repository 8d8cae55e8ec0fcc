"""List and watch one collection, keeping a local copy of it up to date: the loop every discovery watch runs.

`Reflector.run()` loops until cancelled:

1. **List** the collection (with the label and field selectors), replace the store with what came back, and call
   `on_change(store)`. The list's resourceVersion is where the watch starts.
2. **Watch** from that resourceVersion with bookmarks. `ADDED`/`MODIFIED` put the object in the store,
   `DELETED` takes it out, each followed by `on_change(store)`; every event, bookmarks included, advances the
   resourceVersion. When the server ends the watch (its timeout), watch again from the last resourceVersion.
3. **410 Gone** (the resourceVersion was compacted away, at the start of a watch or as an `ERROR` event in it):
   list again at once (step 1).
4. **Any other failure** (connection refused or dropped, a 5xx, a 403 from missing RBAC, a malformed event, a
   watch that ends at once without any event): log it, wait (exponential backoff with jitter, `backoff_initial`
   doubling up to `backoff_max`, back to the start once an attempt lists or receives an event), then resume the
   watch from the last resourceVersion, or list if there is none. The store keeps its last content meanwhile: an
   unreachable API server does not empty the pool.

The store maps `metadata.name` to `transform(object)`. `on_change` runs on the event loop, synchronously, and must
not block. Cancelling the task that runs `run()` closes the open watch connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import aiohttp

from kvroute.router.datalayer.kubernetes.api import ApiError, KubeClient, Object

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Gone(Exception):
    """The resourceVersion is too old: list again."""


class Reflector(Generic[T]):
    def __init__(
        self,
        client: KubeClient,
        path: str,
        *,
        transform: Callable[[Object], T],
        on_change: Callable[[Mapping[str, T]], None],
        label_selector: str | None = None,
        field_selector: str | None = None,
        description: str = "",
        watch_timeout: int = 300,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._path = path
        self._transform = transform
        self._on_change = on_change
        self._label_selector = label_selector
        self._field_selector = field_selector
        self.description = description or path
        self._watch_timeout = watch_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._store: dict[str, T] = {}
        self._resource_version: str | None = None
        self._progress = False  # the current attempt listed or received an event
        self.synced = asyncio.Event()  # set once the first list has been applied
        self.lists = 0  # how many times the collection was listed (a relist follows every 410)

    @property
    def store(self) -> Mapping[str, T]:
        return self._store

    async def run(self) -> None:
        delay = self._backoff_initial
        failing = False
        while True:
            self._progress = False
            listed = self._resource_version is None
            try:
                if listed:
                    await self._list()
                await self._watch()
            except _Gone:
                self._resource_version = None
                if not listed:
                    log.info("%s: resource version expired, listing again", self.description)
                    continue
                # Gone straight after a list: relisting at once could spin, so this counts as a failure.
                failure: BaseException | str = "resource version expired right after listing"
            except (ApiError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failure = exc
            else:
                if failing:
                    log.info("%s: watching again", self.description)
                failing = False
                delay = self._backoff_initial
                continue
            if self._progress and not listed:  # it worked for a while: a dropped connection, resume at once
                delay, failing = self._backoff_initial, False
            level = logging.DEBUG if failing else logging.WARNING
            log.log(level, "%s: %s; retrying in %.1fs", self.description, _describe(failure), delay)
            failing = True
            await asyncio.sleep(delay * self._rng.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff_max)

    async def _list(self) -> None:
        items, resource_version = await self._client.list(
            self._path, label_selector=self._label_selector, field_selector=self._field_selector
        )
        self.lists += 1
        self._store = {_name(item): self._transform(item) for item in items}
        self._resource_version = resource_version
        self._progress = True
        self.synced.set()
        self._notify()

    async def _watch(self) -> None:
        assert self._resource_version is not None
        # Jitter the server-side timeout so that many routers do not all reconnect at once.
        timeout = int(self._watch_timeout * self._rng.uniform(1.0, 1.2))
        stream = self._client.watch(
            self._path,
            resource_version=self._resource_version,
            label_selector=self._label_selector,
            field_selector=self._field_selector,
            timeout_seconds=timeout,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        received = False
        try:
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    received = True
                    self._apply(event.type, event.object)
        except ApiError as exc:
            if exc.gone:
                raise _Gone from exc
            raise
        if not received and loop.time() - started < 1.0:
            # A server (or proxy) that closes every watch at once would otherwise be polled in a tight loop.
            raise aiohttp.ClientPayloadError("the watch ended at once without any event")

    def _apply(self, kind: str, obj: Object) -> None:
        self._progress = True
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self._resource_version = str(version)
        if kind == "BOOKMARK":
            return
        name = _name(obj)
        if kind == "DELETED":
            if self._store.pop(name, None) is None:
                return
        else:
            self._store[name] = self._transform(obj)
        self._notify()

    def _notify(self) -> None:
        try:
            self._on_change(self._store)
        except Exception:
            log.exception("%s: change handler failed", self.description)


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _describe(failure: BaseException | str) -> str:
    if isinstance(failure, ApiError) and failure.status == 403:
        return f"{failure} (does the router's service account have get/list/watch on it?)"
    return str(failure) or type(failure).__name__
