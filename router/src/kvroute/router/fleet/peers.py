"""Where a router's fleet peers are: a fixed list (`--fleet-peers`) or the pods of a label selector
(`--fleet-peer-selector`, `kvroute.router.datalayer.kubernetes.peers.PeerPods`).

A `PeerSource` reports the whole set of peer addresses (`host:port` of their fleet-sync sockets) whenever it
changes; the transport connects to new addresses and disconnects from those that went. A source need not leave
out the router's own address: a replica ignores the batches that carry its own replica id.

The replica id names a replica in its peers' state and logs: `--replica-id`, else the pod's name (`POD_NAME`, from
the downward API), else `<hostname>-<pid>`. Two replicas must never share one.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from kvroute.router.datalayer.kubernetes.selector import LabelSelector

POD_NAME_ENV = "POD_NAME"
POD_IP_ENV = "POD_IP"

# A DNS name or an IPv4 literal: what ZMQ's tcp:// transport dials without brackets.
_HOST = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9.]{0,251}[A-Za-z0-9])?")


class PeerSource(Protocol):
    async def start(self, update: Callable[[frozenset[str]], None]) -> None:
        """Begins reporting: `update(addresses)` with the whole set, now or later, and after every change."""

    async def stop(self) -> None: ...


class StaticPeers:
    """The peers given on the command line; they never change."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self.addresses = frozenset(addresses)

    async def start(self, update: Callable[[frozenset[str]], None]) -> None:
        update(self.addresses)

    async def stop(self) -> None:
        return None


class WorkerPeers:
    """The peers of one worker of a router pod running `workers` workers (`kvroute router --workers N`): its
    sibling workers, over IPC (`siblings`, `ipc://...`), and, when the pod has peers of its own (`pods`), every
    worker of every peer pod: a pod reported at `host:port` has its workers at ports `port` to `port + workers - 1`
    (every pod of a Deployment runs as many workers)."""

    def __init__(self, siblings: Iterable[str], workers: int, pods: PeerSource | None = None) -> None:
        self.siblings = frozenset(siblings)
        self.workers = workers
        self.pods = pods

    async def start(self, update: Callable[[frozenset[str]], None]) -> None:
        if self.pods is None:
            update(self.siblings)
            return
        await self.pods.start(lambda addresses: update(self.siblings | self.expand(addresses)))

    async def stop(self) -> None:
        if self.pods is not None:
            await self.pods.stop()

    def expand(self, addresses: Iterable[str]) -> frozenset[str]:
        """Every worker's address of the pods at `addresses`."""
        expanded: set[str] = set()
        for address in addresses:
            host, _, port = address.rpartition(":")
            expanded.update(f"{host}:{int(port) + i}" for i in range(self.workers) if int(port) + i <= 65535)
        return frozenset(expanded)


def parse_peers(text: str) -> tuple[str, ...]:
    """A `--fleet-peers` value, `host:port,...`; raises `ValueError` naming the item at fault."""
    if not text.strip():
        raise ValueError("--fleet-peers is empty: expected host:port[,host:port...]")
    peers: list[str] = []
    for position, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        host, sep, port = item.rpartition(":")
        where = f"--fleet-peers item {position} {item!r}"
        if not sep or not _HOST.fullmatch(host):
            raise ValueError(f"{where}: expected host:port with an IPv4 address or a DNS name")
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise ValueError(f"{where}: port {port!r} is not an integer in 1-65535")
        address = f"{host}:{int(port)}"
        if address in peers:
            raise ValueError(f"{where}: listed twice")
        peers.append(address)
    return tuple(peers)


def parse_selector(text: str) -> LabelSelector:
    """A `--fleet-peer-selector` value, `key=value,...` (every pair must match); raises `ValueError`."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise ValueError(f"--fleet-peer-selector: {item.strip()!r} is not of the form key=value")
        if key in labels:
            raise ValueError(f"--fleet-peer-selector: label {key!r} is given twice")
        labels[key] = value
    return LabelSelector.from_spec({"matchLabels": labels}, "--fleet-peer-selector")


def default_replica_id(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(POD_NAME_ENV) or f"{socket.gethostname()}-{os.getpid()}"


def own_pod(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """The router's own pod name and IP, from the downward API (`POD_NAME`, `POD_IP`); None when not set."""
    env = os.environ if environ is None else environ
    return env.get(POD_NAME_ENV) or None, env.get(POD_IP_ENV) or None
