"""Helpers of the KV events tests: a consumer that records what it is given, and a publisher in vLLM's format."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import zmq

from kvroute.router.framework import (
    Endpoint,
    KVEvent,
    KVEventsConsumer,
    KVEventsSubscription,
)
from kvroute.router.framework.plugins import NoParams
from tests.support import eventually, free_port

# Publishers and subscribers of these tests listen on 127.0.12.x, away from the simulators' addresses.
_HOSTS = itertools.cycle(f"127.0.12.{i}" for i in range(1, 255))


class RecordingConsumer(KVEventsConsumer):
    type_name = "recording-kv-consumer"

    def __init__(self, name: str, subscription: KVEventsSubscription, *, fail: bool = False) -> None:
        super().__init__(name, NoParams())
        self.subscription = subscription
        self.fail = fail
        self.received: list[tuple[str, str, tuple[KVEvent, ...]]] = []
        self.ranks: list[int] = []  # the data-parallel rank of each message received

    def kv_events_subscription(self) -> KVEventsSubscription:
        return self.subscription

    def on_kv_events(self, endpoint: Endpoint, model: str, events: Sequence[KVEvent], rank: int = 0) -> int:
        self.received.append((endpoint.id, model, tuple(events)))
        self.ranks.append(rank)
        if self.fail:
            raise RuntimeError("consumer failed on purpose")
        return len(events)

    def kv_index_entries(self) -> int:
        return len(self.received)


def message(topic: str, seq: int, events: list[Any], rank: int = 0) -> list[bytes]:
    return [topic.encode(), struct.pack(">Q", seq), msgpack.packb([1.0, events, rank])]


class Publisher:
    """A PUB socket sending vLLM-format messages under one topic, numbering them from 0."""

    def __init__(self, topic: str, *, bind: str | None = None, connect: str | None = None) -> None:
        self.topic = topic
        self.seq = 0
        self.socket = zmq.Context.instance().socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if bind is not None:
            self.socket.bind(bind)
        if connect is not None:
            self.socket.connect(connect)

    def send(self, events: list[Any], seq: int | None = None) -> None:
        self.seq = self.seq if seq is None else seq
        self.socket.send_multipart(message(self.topic, self.seq, events))
        self.seq += 1

    async def until_heard(self, heard: Callable[[], bool]) -> None:
        """Sends empty messages until `heard()` (ZMQ drops what is sent before a subscriber has joined)."""

        def answered() -> bool:
            if heard():
                return True
            self.send([])
            return False

        await eventually(answered, message=f"anything heard from {self.topic}")

    def close(self) -> None:
        self.socket.close(linger=0)


@dataclass(frozen=True)
class Kit:
    hosts: Iterator[str]
    free_port: Callable[[str], int]
    message: Callable[..., list[bytes]]
    consumer: type[RecordingConsumer]


@pytest.fixture
def kit() -> Kit:
    return Kit(_HOSTS, free_port, message, RecordingConsumer)


@pytest.fixture
def publishers() -> Iterator[Callable[..., Publisher]]:
    started: list[Publisher] = []

    def start(topic: str, **where: str) -> Publisher:
        publisher = Publisher(topic, **where)
        started.append(publisher)
        return publisher

    try:
        yield start
    finally:
        for publisher in started:
            publisher.close()
