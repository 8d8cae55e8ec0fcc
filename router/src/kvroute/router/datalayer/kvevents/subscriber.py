"""One KV events subscription: a ZMQ SUB socket whose messages are handed to the consumers on the event loop.

Socket (pyzmq asyncio, topic filter `subscription.topic_filter`, `kv@` by default):

- central: binds `subscription.bind` (e.g. `tcp://*:5557`); every engine connects its publisher to it;
- per endpoint: connects to `tcp://<endpoint address>:<endpoint_port>` for every endpoint of the pool, following
  the pool (connect on add, disconnect on remove); every engine binds that port. ZMQ reconnects by itself to an
  engine that restarts.

With `data_parallel_size` N > 1 the socket binds, or connects to, the N ports from the configured one: vLLM's
rank r publishes on the configured port + r (`ZmqEventPublisher.offset_endpoint_port`, for bind and connect).

One task reads the socket and handles each message before reading the next (`handle`), so the messages of one
endpoint are applied in the order they arrived. A message:

1. is decoded (`decode`); a malformed one is counted, logged at debug level and dropped;
2. must name, in its topic `kv@<ip:port>@<model>`, an endpoint of the pool; otherwise it is counted and dropped
   (an engine that is not, or no longer, in the pool must not create state);
3. is checked against the last sequence number of its publisher, (topic, data-parallel rank): the ranks of one
   endpoint share its topic and number their messages each from 0. The first message of a publisher sets it. A number
   more than one ahead is a gap (messages lost: counted, and logged at warning level at most once every
   `GAP_LOG_INTERVAL_S`); the entries stay, as a later `BlockRemoved` or LRU eviction corrects them. A number
   not ahead means the publisher restarted with an empty cache: counted, and the consumers receive an
   `AllBlocksCleared` ahead of the message's events;
4. goes to every consumer (`on_kv_events`, with the message's rank), whose exception is logged without stopping
   the loop; the events applied are counted by kind, the blocks a consumer could not index too, and each
   consumer's index size is published.

The sequence state of an endpoint that leaves the pool is forgotten, so one that comes back under the same id
starts afresh. `close` stops reading and closes the socket; `stop` also waits for the reading task. ZMQ releases
a closed socket's address in the background, so `start` retries a bind that finds its address in use for a
moment (`retry_for`) before failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence

import zmq
import zmq.asyncio

from kvroute.router.datalayer.kvevents.decode import KVEventMessage, MalformedMessage, decode_message
from kvroute.router.datalayer.pool import EndpointPool, PoolChange
from kvroute.router.framework import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    Endpoint,
    KVEvent,
    KVEventsConsumer,
    KVEventsSubscription,
)
from kvroute.router.observability import RouterMetrics

log = logging.getLogger(__name__)

GAP_LOG_INTERVAL_S = 10.0
BIND_RETRY_S = 2.0
RECEIVE_HWM = 100_000  # messages queued in the socket while the loop is busy, beyond which ZMQ drops
_KINDS: dict[type, str] = {
    BlockStored: "block_stored",
    BlockRemoved: "block_removed",
    AllBlocksCleared: "all_blocks_cleared",
}


async def _bind(socket: zmq.asyncio.Socket, address: str, retry_for: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    while True:
        try:
            socket.bind(address)
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or loop.time() >= deadline:
                raise
        await asyncio.sleep(0.05)


def offset_port(address: str, rank: int) -> str:
    """`address` with its port moved up by `rank`, as vLLM moves the KV-events endpoint of data-parallel rank
    `rank` (`tcp://*:5557` -> `tcp://*:5558` for rank 1); other transports get vLLM's `_dp<rank>` suffix."""
    if rank == 0:
        return address
    if address.startswith("tcp://"):
        host, _, port = address.rpartition(":")
        return f"{host}:{int(port) + rank}"
    return f"{address}_dp{rank}"


def endpoint_address(endpoint: Endpoint, port: int) -> str:
    """The ZMQ address of an endpoint's publisher."""
    host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
    return f"tcp://{host}:{port}"


class KVEventsSubscriber:
    def __init__(
        self,
        subscription: KVEventsSubscription,
        pool: EndpointPool,
        consumers: Sequence[KVEventsConsumer],
        metrics: RouterMetrics | None = None,
        *,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.subscription = subscription
        self.consumers: tuple[KVEventsConsumer, ...] = tuple(consumers)
        self._pool = pool
        self._metrics = metrics
        self._context = context or zmq.asyncio.Context.instance()
        self._socket: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._connected: dict[str, list[str]] = {}  # endpoint id -> addresses connected to (one per rank)
        self._last_seq: dict[tuple[str, int], int] = {}  # (topic, rank) -> last sequence number
        self._topics: dict[str, set[tuple[str, int]]] = {}  # endpoint id -> its publishers seen
        self._gap_logged_at = -math.inf
        self._gaps_unlogged = 0

    @property
    def address(self) -> str | None:
        """The address bound last (a wildcard port resolved; rank N-1's with N data-parallel ranks), None in
        per-endpoint mode or before `start`."""
        if self._socket is None or self.subscription.bind is None:
            return None
        return str(self._socket.getsockopt_string(zmq.LAST_ENDPOINT))

    async def start(self, *, retry_for: float = BIND_RETRY_S) -> None:
        """Opens the socket and starts reading; raises `zmq.ZMQError` when the address cannot be bound (in use
        for longer than `retry_for` seconds, or invalid)."""
        if self._socket is not None:
            return
        socket = self._context.socket(zmq.SUB)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
            socket.setsockopt(zmq.SUBSCRIBE, self.subscription.topic_filter.encode())
            bind = self.subscription.bind
            if bind is not None:
                if "[" in bind:
                    socket.setsockopt(zmq.IPV6, 1)
                for rank in range(self.subscription.data_parallel_size):
                    await _bind(socket, offset_port(bind, rank), retry_for)
        except BaseException:
            socket.close(linger=0)
            raise
        if self._socket is not None:  # started meanwhile
            socket.close(linger=0)
            return
        self._socket = socket
        self._unsubscribe = self._pool.subscribe(self._on_pool_change)
        for endpoint in self._pool.snapshot():
            self._connect(endpoint)
        self._task = asyncio.get_running_loop().create_task(self._run(socket), name="kvroute-kv-events")

    def close(self) -> None:
        """Stops reading and closes the socket now; `stop` waits for the reading task to end."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._task is not None:
            self._task.cancel()
        socket, self._socket = self._socket, None
        if socket is not None:
            socket.close(linger=0)
        self._connected.clear()

    async def stop(self) -> None:
        self.close()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, socket: zmq.asyncio.Socket) -> None:
        while True:
            frames = await socket.recv_multipart()
            self.handle(frames)

    def handle(self, frames: Sequence[bytes]) -> None:
        """Applies one message (see the module docstring); never raises."""
        metrics = self._metrics
        try:
            message = decode_message(frames)
        except MalformedMessage as exc:
            log.debug("dropping a malformed KV events message: %s", exc)
            if metrics is not None:
                metrics.record_kv_malformed()
            return
        endpoint = self._pool.get(message.endpoint_id)
        if endpoint is None:
            log.debug("dropping KV events of %s, which is not in the pool", message.endpoint_id)
            if metrics is not None:
                metrics.record_kv_unknown_endpoint()
            return
        events: Sequence[KVEvent] = message.events
        if self._restarted(message):
            events = (AllBlocksCleared(), *events)
        rank = message.rank
        for consumer in self.consumers:
            try:
                unindexed = consumer.on_kv_events(endpoint, message.model, events, rank)
            except Exception:
                log.exception("KV events consumer %r failed on a message of %s", consumer.name, endpoint.id)
                continue
            if metrics is not None:
                if unindexed:
                    metrics.record_kv_unindexed(unindexed)
                metrics.set_kv_index_entries(consumer.name, consumer.kv_index_entries())
        if metrics is not None:
            counts: dict[str, int] = {}
            for event in events:
                kind = _KINDS[type(event)]
                counts[kind] = counts.get(kind, 0) + 1
            for kind, count in counts.items():
                metrics.record_kv_events(kind, count)

    def _restarted(self, message: KVEventMessage) -> bool:
        """Tracks the publisher's sequence; True when the publisher restarted."""
        publisher, seq = (message.topic, message.rank), message.seq
        last = self._last_seq.get(publisher)
        self._last_seq[publisher] = seq
        topic = message.topic if not message.rank else f"{message.topic} (rank {message.rank})"
        if last is None:
            self._topics.setdefault(message.endpoint_id, set()).add(publisher)
            return False
        if seq <= last:
            log.info("KV event publisher %s restarted (sequence %d after %d): dropping its entries", topic, seq, last)
            if self._metrics is not None:
                self._metrics.record_kv_restart()
            return True
        if seq > last + 1:
            if self._metrics is not None:
                self._metrics.record_kv_gap()
            self._log_gap(topic, last, seq)
        return False

    def _log_gap(self, topic: str, last: int, seq: int) -> None:
        now = time.monotonic()
        if now - self._gap_logged_at < GAP_LOG_INTERVAL_S:
            self._gaps_unlogged += 1
            return
        also = f" ({self._gaps_unlogged} more gaps since the last warning)" if self._gaps_unlogged else ""
        log.warning("KV events lost from %s: sequence %d after %d%s", topic, seq, last, also)
        self._gap_logged_at = now
        self._gaps_unlogged = 0

    def _on_pool_change(self, change: PoolChange) -> None:
        for endpoint in change.removed:
            for publisher in self._topics.pop(endpoint.id, ()):
                self._last_seq.pop(publisher, None)
            self._disconnect(endpoint.id)
        if self.subscription.endpoint_port is not None:
            for endpoint in change.added:
                self._connect(endpoint)

    def _connect(self, endpoint: Endpoint) -> None:
        port = self.subscription.endpoint_port
        socket = self._socket
        if port is None or socket is None or endpoint.id in self._connected:
            return
        connected: list[str] = []
        for rank in range(self.subscription.data_parallel_size):
            address = endpoint_address(endpoint, port + rank)
            try:
                if ":" in endpoint.address:
                    socket.setsockopt(zmq.IPV6, 1)
                socket.connect(address)
            except zmq.ZMQError as exc:
                log.error("cannot connect to the KV events of %s at %s: %s", endpoint.id, address, exc)
                continue
            connected.append(address)
        self._connected[endpoint.id] = connected

    def _disconnect(self, endpoint_id: str) -> None:
        addresses = self._connected.pop(endpoint_id, ())
        socket = self._socket
        if socket is not None:
            for address in addresses:
                with contextlib.suppress(zmq.ZMQError):
                    socket.disconnect(address)
