"""The API adapter (kubernetes_asyncio underneath) against the fake API server: list pages, errors, watch events,
tokens."""

from __future__ import annotations

from typing import Any

import pytest

from kvroute.router.datalayer.kubernetes.api import ApiError, collection_path

PODS = "/api/v1/namespaces/ns/pods"


def test_collection_paths_of_core_and_group_resources() -> None:
    assert collection_path("ns", "pods") == PODS
    assert collection_path("ns", "things", "example.com", "v2") == "/apis/example.com/v2/namespaces/ns/things"


async def test_list_follows_continue_tokens_and_returns_the_resource_version(api: Any, make_pod: Any) -> None:
    for i in range(5):
        api.put(PODS, make_pod(f"p{i}"))

    async with api.client() as client:
        items, version = await client.list(PODS, page_size=2, label_selector="app=llm")

    assert [item["metadata"]["name"] for item in items] == ["p0", "p1", "p2", "p3", "p4"]
    assert version == str(api.resource_version)
    lists = api.queries(PODS, watch=False)
    assert [q.get("continue") for q in lists] == [None, "2", "4"]
    assert {q["labelSelector"] for q in lists} == {"app=llm"}


async def test_errors_carry_the_status_and_the_servers_message(api: Any) -> None:
    api.fail_next = [403]

    async with api.client() as client:
        with pytest.raises(ApiError) as forbidden:
            await client.list(PODS)
        with pytest.raises(ApiError) as missing:
            await client.get(PODS + "/absent")

    assert forbidden.value.status == 403
    assert "failing on purpose" in str(forbidden.value)
    assert missing.value.status == 404
    assert f"{PODS}/absent not found" in str(missing.value)


async def test_watch_yields_changes_after_the_resource_version_then_bookmarks(api: Any, make_pod: Any) -> None:
    api.put(PODS, make_pod("before"))
    since = str(api.resource_version)
    api.put(PODS, make_pod("a"))
    api.put(PODS, make_pod("a", ready=False))
    api.delete(PODS, "a")

    async with api.client() as client:
        stream = client.watch(PODS, resource_version=since, timeout_seconds=5)
        events = [await anext(stream) for _ in range(3)]
        api.bookmark()
        bookmark = await anext(stream)
        await stream.aclose()

    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("MODIFIED", "a"),
        ("DELETED", "a"),
    ]
    assert bookmark.type == "BOOKMARK"
    assert bookmark.object["metadata"]["resourceVersion"] == str(api.resource_version)
    query = api.queries(PODS, watch=True)[0]
    assert (query["resourceVersion"], query["allowWatchBookmarks"], query["timeoutSeconds"]) == (since, "true", "5")


async def test_an_expired_resource_version_raises_gone(api: Any, make_pod: Any) -> None:
    since = str(api.resource_version)
    api.put(PODS, make_pod("a"))
    api.compact()

    async with api.client() as client:
        for as_event in (True, False):
            api.gone_as_event = as_event
            with pytest.raises(ApiError) as caught:
                async for _ in client.watch(PODS, resource_version=since):
                    pass
            assert caught.value.gone, as_event


async def test_events_larger_than_aiohttps_line_limit_arrive_whole(api: Any, make_pod: Any) -> None:
    big = make_pod("big")
    big["metadata"]["annotations"] = {"blob": "x" * 300_000}
    since = str(api.resource_version)
    api.put(PODS, big)

    async with api.client() as client:
        stream = client.watch(PODS, resource_version=since)
        event = await anext(stream)
        await stream.aclose()

    assert len(event.object["metadata"]["annotations"]["blob"]) == 300_000


async def test_a_wrong_token_is_refused(api: Any) -> None:
    api.token = "right"

    async with api.client(token="wrong") as client:
        with pytest.raises(ApiError) as caught:
            await client.list(PODS)

    assert caught.value.status == 401
    assert "no valid bearer token" in str(caught.value)
    assert [r.authorization for r in api.requests] == ["Bearer wrong"]
