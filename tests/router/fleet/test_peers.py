"""Peer lists from the command line, the peer selector, and the replica id."""

from __future__ import annotations

import os
import socket

import pytest

from kvroute.router.fleet.peers import StaticPeers, WorkerPeers, default_replica_id, parse_peers, parse_selector


def test_peers_are_host_port_pairs_in_order() -> None:
    assert parse_peers("127.0.0.2:9005, router-1.routers.ns.svc:9005,127.0.0.3:09006") == (
        "127.0.0.2:9005",
        "router-1.routers.ns.svc:9005",
        "127.0.0.3:9006",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--fleet-peers is empty"),
        ("127.0.0.2", "item 1 '127.0.0.2': expected host:port"),
        ("127.0.0.2:9005,,127.0.0.3:9005", "item 2 '': expected host:port"),
        ("127.0.0.2:0", "item 1 '127.0.0.2:0': port '0' is not an integer in 1-65535"),
        ("127.0.0.2:http", "port 'http' is not an integer"),
        ("[::1]:9005", "expected host:port with an IPv4 address or a DNS name"),
        ("tcp://127.0.0.2:9005", "expected host:port"),
        ("127.0.0.2:9005,127.0.0.2:9005", "item 2 '127.0.0.2:9005': listed twice"),
    ],
)
def test_a_bad_peer_list_names_the_item(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="--fleet-peers") as error:
        parse_peers(text)
    assert message in str(error.value)


def test_the_selector_is_every_label_pair() -> None:
    selector = parse_selector("app.kubernetes.io/name=kvroute-router, app.kubernetes.io/instance=llm")
    assert selector.query() == "app.kubernetes.io/instance=llm,app.kubernetes.io/name=kvroute-router"
    assert selector.matches({"app.kubernetes.io/name": "kvroute-router", "app.kubernetes.io/instance": "llm"})
    assert not selector.matches({"app.kubernetes.io/name": "kvroute-router", "app.kubernetes.io/instance": "x"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app", "'app' is not of the form key=value"),
        ("=x", "'=x' is not of the form key=value"),
        ("app=a,app=b", "label 'app' is given twice"),
        ("app=a b", "--fleet-peer-selector.matchLabels[app] 'a b' is not a valid label key or value"),
    ],
)
def test_a_bad_selector_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_selector(text)
    assert message in str(error.value)


def test_the_replica_id_is_the_pod_name_else_host_and_pid() -> None:
    assert default_replica_id({"POD_NAME": "llm-kvroute-7d9f-abcde"}) == "llm-kvroute-7d9f-abcde"
    assert default_replica_id({}) == f"{socket.gethostname()}-{os.getpid()}"


async def test_static_peers_report_their_list_once() -> None:
    seen: list[frozenset[str]] = []
    peers = StaticPeers(parse_peers("127.0.0.2:9005,127.0.0.3:9005"))
    await peers.start(seen.append)
    await peers.stop()
    assert seen == [frozenset({"127.0.0.2:9005", "127.0.0.3:9005"})]


async def test_a_worker_hears_its_siblings_and_every_worker_of_the_peer_pods() -> None:
    siblings = ["ipc:///run/kvroute/fleet-1.sock", "ipc:///run/kvroute/fleet-2.sock"]
    seen: list[frozenset[str]] = []

    alone = WorkerPeers(siblings, 3)
    await alone.start(seen.append)
    with_pods = WorkerPeers(siblings, 3, StaticPeers(["127.0.5.2:5555", "127.0.5.3:65534"]))
    await with_pods.start(seen.append)
    await with_pods.stop()

    assert seen[0] == frozenset(siblings)
    assert seen[1] == frozenset(
        [*siblings, "127.0.5.2:5555", "127.0.5.2:5556", "127.0.5.2:5557", "127.0.5.3:65534", "127.0.5.3:65535"]
    )
