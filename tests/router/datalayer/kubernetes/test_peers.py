"""PeerPods against the fake API server: the other router replicas' fleet addresses follow their pods."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kvroute.router.datalayer.kubernetes.peers import PeerPods, peer_addresses, peer_pod
from kvroute.router.datalayer.kubernetes.selector import LabelSelector
from tests.support import eventually

PODS = "/api/v1/namespaces/ns/pods"
ROUTER = {"app.kubernetes.io/name": "kvroute-router", "app.kubernetes.io/instance": "llm"}
SELECTOR = LabelSelector.from_spec({"matchLabels": ROUTER})


class Updates:
    def __init__(self) -> None:
        self.seen: list[frozenset[str]] = []

    def __call__(self, addresses: frozenset[str]) -> None:
        self.seen.append(addresses)

    @property
    def last(self) -> frozenset[str] | None:
        return self.seen[-1] if self.seen else None

    async def until(self, expected: set[str]) -> None:
        def arrived() -> bool:
            assert self.last == expected, f"peers {self.last}, expected {expected}"
            return True

        await eventually(arrived, interval=0.01)


@pytest.fixture
async def watch(api: Any) -> AsyncIterator[Callable[..., Any]]:
    running: list[PeerPods] = []

    async def start(**options: Any) -> tuple[PeerPods, Updates]:
        peers = PeerPods(api.client(), namespace="ns", selector=SELECTOR, port=9005, **options)
        updates = Updates()
        running.append(peers)
        await peers.start(updates)
        return peers, updates

    yield start
    for peers in running:
        await peers.stop()


async def test_the_other_replicas_pods_are_the_peers(api: Any, make_pod: Any, watch: Any) -> None:
    api.put(PODS, make_pod("llm-kvroute-a", "127.0.5.1", labels=ROUTER))
    api.put(PODS, make_pod("llm-kvroute-b", "127.0.5.2", labels=ROUTER, ready=False))  # starting: heard early
    api.put(PODS, make_pod("llm-kvroute-c", "127.0.5.3", labels=ROUTER, terminating=True))  # draining
    api.put(PODS, make_pod("llm-kvroute-d", None, labels=ROUTER))  # no address yet
    api.put(PODS, make_pod("other-kvroute-a", "127.0.5.4", labels={**ROUTER, "app.kubernetes.io/instance": "x"}))
    api.put(PODS, make_pod("vllm-0", "127.0.5.5"))

    peers, updates = await watch(own_name="llm-kvroute-a", own_ip="127.0.5.1")

    await updates.until({"127.0.5.2:9005", "127.0.5.3:9005"})
    assert api.queries(PODS, watch=False)[0]["labelSelector"] == SELECTOR.query()
    assert peers.addresses == {"127.0.5.2:9005", "127.0.5.3:9005"}


async def test_peers_come_and_go_with_their_pods(api: Any, make_pod: Any, watch: Any) -> None:
    api.put(PODS, make_pod("llm-kvroute-a", "127.0.5.1", labels=ROUTER))
    _, updates = await watch(own_name="llm-kvroute-a")
    await updates.until(set())

    api.put(PODS, make_pod("llm-kvroute-b", None, labels=ROUTER))
    api.put(PODS, make_pod("llm-kvroute-b", "127.0.5.2", labels=ROUTER))
    await updates.until({"127.0.5.2:9005"})
    api.put(PODS, make_pod("llm-kvroute-c", "127.0.5.3", labels=ROUTER))
    await updates.until({"127.0.5.2:9005", "127.0.5.3:9005"})
    api.delete(PODS, "llm-kvroute-b")
    await updates.until({"127.0.5.3:9005"})
    failed = make_pod("llm-kvroute-c", "127.0.5.3", labels=ROUTER)
    failed["status"]["phase"] = "Failed"  # evicted: its address may be another pod's soon
    api.put(PODS, failed)
    await updates.until(set())
    # Only changes are reported.
    assert updates.seen == [
        frozenset(),
        frozenset({"127.0.5.2:9005"}),
        frozenset({"127.0.5.2:9005", "127.0.5.3:9005"}),
        frozenset({"127.0.5.3:9005"}),
        frozenset(),
    ]


def test_without_its_name_a_router_leaves_out_its_own_address() -> None:
    pods = [
        peer_pod({"metadata": {"name": n, "labels": ROUTER}, "status": {"podIP": ip}})
        for n, ip in (("a", "127.0.5.1"), ("b", "127.0.5.2"))
    ]
    assert peer_addresses(pods, 9005, SELECTOR, own_ip="127.0.5.1") == {"127.0.5.2:9005"}
    assert peer_addresses(pods, 9005, SELECTOR) == {"127.0.5.1:9005", "127.0.5.2:9005"}
