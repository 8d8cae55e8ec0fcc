"""The list-and-watch loop: events, bookmarks, 410 relists, dropped connections, errors and cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from kvroute.router.datalayer.kubernetes.watch import Reflector
from tests.support import eventually

PODS = "/api/v1/namespaces/ns/pods"


class Watched:
    """A reflector over the fake server's pods, recording the names it saw after every change."""

    def __init__(self, api: Any, **options: Any) -> None:
        self.changes: list[list[str]] = []
        self.client = api.client()
        options = {"backoff_initial": 0.01, "backoff_max": 0.05, "rng": random.Random(1), **options}
        self.reflector: Reflector[dict[str, Any]] = Reflector(
            self.client, PODS, transform=lambda obj: obj, on_change=self._record, description="pods", **options
        )

    def _record(self, store: Mapping[str, Any]) -> None:
        self.changes.append(sorted(store))

    @property
    def names(self) -> list[str]:
        return sorted(self.reflector.store)


@pytest.fixture
async def watched(api: Any) -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[Watched, asyncio.Task[None]]] = []

    async def start(**options: Any) -> Watched:
        w = Watched(api, **options)
        started.append((w, asyncio.get_running_loop().create_task(w.reflector.run())))
        await asyncio.wait_for(w.reflector.synced.wait(), 2)
        return w

    yield start
    for w, task in started:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await w.client.close()


async def test_list_then_watch_keeps_the_store_equal_to_the_server(api: Any, make_pod: Any, watched: Any) -> None:
    api.put(PODS, make_pod("a"))
    w = await watched()
    assert w.changes == [["a"]]

    api.put(PODS, make_pod("b"))
    await eventually(lambda: w.names == ["a", "b"])
    api.put(PODS, make_pod("b", ready=False))
    await eventually(lambda: w.reflector.store["b"]["status"]["conditions"][1]["status"] == "False")
    api.delete(PODS, "a")
    await eventually(lambda: w.names == ["b"])

    assert w.changes == [["a"], ["a", "b"], ["a", "b"], ["b"]]
    assert w.reflector.lists == 1


async def test_bookmarks_advance_the_resource_version_without_a_change(api: Any, make_pod: Any, watched: Any) -> None:
    api.put(PODS, make_pod("a"))
    w = await watched(watch_timeout=1)
    await eventually(lambda: api.open_watches(PODS) == 1)
    api.bookmark()
    bookmark = str(api.resource_version)

    # The server ends the watch after its timeout; the next one starts from the bookmark, without listing.
    await eventually(lambda: len(api.queries(PODS, watch=True)) == 2, timeout=3)

    assert api.queries(PODS, watch=True)[1]["resourceVersion"] == bookmark
    assert w.changes == [["a"]]
    assert w.reflector.lists == 1


async def test_a_dropped_connection_resumes_from_the_last_version_without_listing(
    api: Any, make_pod: Any, watched: Any
) -> None:
    w = await watched()
    api.put(PODS, make_pod("a"))
    await eventually(lambda: w.names == ["a"])
    seen = str(api.resource_version)

    api.drop_watches()
    api.put(PODS, make_pod("b"))  # made while the watch was down: the resumed watch replays it

    await eventually(lambda: w.names == ["a", "b"])
    assert w.reflector.lists == 1
    assert api.queries(PODS, watch=True)[-1]["resourceVersion"] == seen


@pytest.mark.parametrize("as_event", [True, False], ids=["error-event", "http-410"])
async def test_gone_lists_again_and_catches_up(api: Any, make_pod: Any, watched: Any, as_event: bool) -> None:
    api.gone_as_event = as_event
    api.put(PODS, make_pod("a"))
    w = await watched()
    await eventually(lambda: api.open_watches(PODS) == 1)

    api.drop_watches()
    api.delete(PODS, "a")
    api.put(PODS, make_pod("c"))
    api.compact()  # the resumed watch's version is gone: only a new list can tell what happened

    await eventually(lambda: w.reflector.lists == 2)
    assert w.names == ["c"]
    assert w.changes[-1] == ["c"]


async def test_server_errors_back_off_and_keep_the_last_store(api: Any, make_pod: Any, watched: Any) -> None:
    api.put(PODS, make_pod("a"))
    w = await watched()
    await eventually(lambda: api.open_watches(PODS) == 1)
    api.fail_next = [500, 503, 500]
    requests_before = len(api.requests)

    api.drop_watches()
    await eventually(lambda: not api.fail_next)
    assert w.names == ["a"]  # an unreachable API server does not empty the store
    api.put(PODS, make_pod("b"))

    await eventually(lambda: w.names == ["a", "b"])
    assert len(api.requests) - requests_before == 4  # three failures, then the watch that got through
    assert w.reflector.lists == 1


async def test_a_failing_change_handler_does_not_stop_the_watch(api: Any, make_pod: Any) -> None:
    seen: list[int] = []

    def handler(store: Mapping[str, Any]) -> None:
        seen.append(len(store))
        raise RuntimeError("handler bug")

    async with api.client() as client:
        reflector: Reflector[Any] = Reflector(client, PODS, transform=lambda o: o, on_change=handler)
        task = asyncio.get_running_loop().create_task(reflector.run())
        await eventually(lambda: seen == [0])
        api.put(PODS, make_pod("a"))
        await eventually(lambda: seen == [0, 1])
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_cancelling_the_run_closes_the_watch_connection(api: Any) -> None:
    async with api.client() as client:
        reflector: Reflector[Any] = Reflector(client, PODS, transform=lambda o: o, on_change=lambda s: None)
        api.collections[PODS] = {}
        task = asyncio.get_running_loop().create_task(reflector.run())
        await eventually(lambda: api.open_watches(PODS) == 1)

        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

        await eventually(lambda: api.open_watches(PODS) == 0)
