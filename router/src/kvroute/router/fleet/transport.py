"""Fleet sync over ZMQ: every replica publishes its batches, and subscribes to every peer's.

Each replica binds one PUB socket on `host:port` (`--host`, `--fleet-port`) and keeps one SUB socket, subscribed
to everything, connected to the PUB socket of every address its `PeerSource` reports (connecting to new
addresses, disconnecting from those that went). A message is one ZMQ frame: a `FleetSync` batch. The workers of
one router pod (`kvroute router --workers N`) are replicas too: each also binds `ipc://` + `FleetSettings.ipc_path`
(only that, with `tcp` off, when the pod has no peers of its own), and its peers' addresses may be `ipc://...`.

- **Flush**: by default (`--fleet-sync-interval 0`) the records go out as soon as the event loop is free: the
  first record after a send schedules the next one (`loop.call_soon`), so what one loop iteration recorded
  (several requests under load) leaves as one batch (`FleetSync.take_batch`) with no added delay. With an
  interval, every that many seconds instead. An empty batch goes out at least every second, as a heartbeat.
  The delay matters for routing: in the routing-quality benchmark 4 replicas lost 3% TTFT p90 on a multi-LoRA
  workload with records 0.2 ms late and 15% with a 5 ms batching interval (docs/benchmarks.md). When the
  transport stops, one last batch carries the completions of the requests drained meanwhile.
- **Receive**: each message goes to `FleetSync.receive`. One that is not a batch (wrong framing, undecodable) is
  counted and dropped; nothing a peer sends stops the loop. A replica's own batches (its address may be in the
  peer list) are recognised by their replica id and ignored.
- **Expiry**: once a second `FleetSync.expire_peers` forgets peers silent for the peer timeout, which completes
  their open requests, so a replica that died does not leave its in-flight load behind.

Delivery is ZMQ PUB/SUB's: best effort. A peer that is not connected yet misses what is sent meanwhile; a peer
that cannot keep up loses batches once `SEND_HWM` are queued for it (peers count the gaps and end requests they
hear nothing more of after `FleetSync`'s stale timeout). ZMTP heartbeats close a connection to a peer that
stopped answering, so nothing queues for it. Messages larger than `MAX_MESSAGE_BYTES` are refused by the
receiver (ZMQ drops the connection, which then reconnects).

Clock: `time.monotonic()` for every `now`; peers compare only their own clock readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import zmq
import zmq.asyncio

from kvroute.router.fleet.defaults import DEFAULT_FLEET_PORT, DEFAULT_PEER_TIMEOUT, DEFAULT_SYNC_INTERVAL
from kvroute.router.fleet.peers import PeerSource
from kvroute.router.fleet.sync import FleetSync
from kvroute.router.observability import FleetStats

log = logging.getLogger(__name__)

EXPIRE_INTERVAL = 1.0
HEARTBEAT_CHECK = 0.1  # seconds between heartbeat checks when records are sent at once
SEND_HWM = 10_000  # batches queued per peer before the peer loses some
RECEIVE_HWM = 1000
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 5000
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 2000
FINAL_LINGER_MS = 200  # how long the last batch may take to leave when the transport stops


@dataclass(frozen=True)
class FleetSettings:
    """How one replica takes part in fleet sync (`kvroute router --fleet-*`)."""

    replica_id: str
    peers: PeerSource
    host: str = "127.0.0.1"
    port: int = DEFAULT_FLEET_PORT  # 0: any free port (see `FleetTransport.address`)
    interval: float = DEFAULT_SYNC_INTERVAL
    peer_timeout: float = DEFAULT_PEER_TIMEOUT
    tcp: bool = True  # bind `host:port`; off for a worker whose pod shares with its own workers only
    ipc_path: str | None = None  # also bind this Unix socket path (the workers of one pod)


class FleetTransport:
    def __init__(
        self, sync: FleetSync, settings: FleetSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.sync = sync
        self.settings = settings
        self.malformed = 0
        self.bytes_sent = 0
        self._clock = clock
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._pub: zmq.Socket[bytes] | None = None  # never blocks, so a plain socket
        self._sub: zmq.asyncio.Socket | None = None
        self._connected: set[str] = set()
        self._address: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._peers_started = False

    @property
    def address(self) -> str:
        """`host:port` of the PUB socket as bound (`ipc://path` without TCP)."""
        assert self._address is not None, "not started"
        return self._address

    @property
    def connected(self) -> frozenset[str]:
        """The peer addresses the SUB socket is connected to."""
        return frozenset(self._connected)

    async def start(self) -> None:
        """Binds the PUB socket (raises `OSError` if the address is taken), then follows the peers."""
        settings = self.settings
        context = self._context = zmq.Context()
        pub = self._pub = context.socket(zmq.PUB)
        sub = self._sub = zmq.asyncio.Socket.from_socket(context.socket(zmq.SUB))
        for socket in (pub, sub):
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        pub.setsockopt(zmq.SNDHWM, SEND_HWM)
        sub.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        sub.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sub.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sub.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        port = str(settings.port) if settings.port else "*"
        binds = [f"tcp://{settings.host}:{port}"] if settings.tcp else []
        if settings.ipc_path is not None:
            binds.append(f"ipc://{settings.ipc_path}")
        if not binds:
            await self._close()
            raise OSError("fleet sync has no address to publish on: give a TCP port or an IPC path")
        for bind in binds:
            try:
                pub.bind(bind)
            except zmq.ZMQError as exc:
                await self._close()
                raise OSError(f"fleet sync cannot listen on {bind.partition('://')[2]}: {exc}") from None
            if bind.startswith("tcp://"):
                bound = pub.getsockopt_string(zmq.LAST_ENDPOINT)
                self._address = f"{settings.host}:{bound.rpartition(':')[2]}"
        if self._address is None:
            self._address = binds[0]
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._receive_loop(), name="kvroute-fleet-receive"),
            loop.create_task(self._flush_loop(), name="kvroute-fleet-flush"),
        ]
        if settings.interval == 0:

            def send_soon() -> None:
                loop.call_soon(self._flush_pending)

            self.sync.on_pending = send_soon
        await settings.peers.start(self.set_peers)
        self._peers_started = True
        log.info("fleet sync: replica %s publishing on %s", self.sync.replica_id, self._address)

    def _flush_pending(self) -> None:
        self._flush(self._clock())

    async def stop(self) -> None:
        """Stops following the peers, sends what is left, and closes the sockets."""
        self.sync.on_pending = None
        if self._peers_started:
            self._peers_started = False
            await self.settings.peers.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._pub is not None:
            self._flush(self._clock())
        await self._close()

    def set_peers(self, addresses: Iterable[str]) -> None:
        """Subscribe to exactly `addresses` (`host:port`, or `ipc://path`) from now on."""
        sub = self._sub
        if sub is None:
            return
        wanted = set(addresses)
        for address in sorted(self._connected - wanted):
            with contextlib.suppress(zmq.ZMQError):  # already gone with its connection
                sub.disconnect(_endpoint(address))
            self._connected.discard(address)
        for address in sorted(wanted - self._connected):
            try:
                sub.connect(_endpoint(address))
            except zmq.ZMQError as exc:
                log.error("fleet sync cannot subscribe to %s: %s", address, exc)
                continue
            self._connected.add(address)
        log.debug("fleet sync: subscribed to %s", ", ".join(sorted(self._connected)) or "nobody")

    def stats(self) -> FleetStats:
        sync = self.sync
        counters = sync.counters
        return FleetStats(
            batches_sent=counters.sent_batches,
            bytes_sent=self.bytes_sent,
            batches_received=counters.received_batches,
            batches_malformed=self.malformed,
            records_applied=counters.applied_records,
            records_rejected=counters.rejected_records,
            sequence_gaps=counters.sequence_gaps,
            peers_expired=counters.expired_peers,
            peer_requests_stale=counters.stale_requests,
            peers=len(sync.peers),
            peer_addresses=len(self._connected),
            peer_requests_open=sync.open_peer_requests,
        )

    async def _flush_loop(self) -> None:
        # Sending at once: this loop only sends the heartbeats (take_batch decides when one is due).
        interval = self.settings.interval or HEARTBEAT_CHECK
        next_expiry = self._clock() + EXPIRE_INTERVAL
        while True:
            await asyncio.sleep(interval)
            now = self._clock()
            self._flush(now)
            if now >= next_expiry:
                next_expiry = now + EXPIRE_INTERVAL
                try:
                    self.sync.expire_peers(now)
                except Exception:
                    log.exception("fleet sync: expiring peers failed")

    def _flush(self, now: float) -> None:
        try:
            data = self.sync.take_batch(now)
        except Exception:
            log.exception("fleet sync: building a batch failed")
            return
        if data is None or self._pub is None:
            return
        try:
            # A PUB socket never blocks: at the high-water mark of a peer the message is dropped for that peer.
            self._pub.send(data, zmq.NOBLOCK, copy=len(data) < 65536)
        except zmq.ZMQError as exc:
            log.warning("fleet sync: publishing a batch failed: %s", exc)
            return
        self.bytes_sent += len(data)

    async def _receive_loop(self) -> None:
        sub = self._sub
        assert sub is not None
        # Wait on the asyncio socket, then drain what is queued through a plain socket sharing it: one wake-up
        # per burst of batches, not one future per batch.
        plain: zmq.Socket[bytes] = zmq.Socket.shadow(sub.underlying)
        while True:
            await sub.poll()  # readable
            while True:
                try:
                    frames = plain.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._apply(frames)

    def _apply(self, frames: list[bytes]) -> None:
        if len(frames) != 1:
            self._malformed(f"a message of {len(frames)} frames")
            return
        try:
            self.sync.receive(frames[0], self._clock())
        except ValueError as exc:
            self._malformed(str(exc))
        except Exception:
            log.exception("fleet sync: applying a peer's batch failed")

    def _malformed(self, what: str) -> None:
        self.malformed += 1
        # Debug only: a stray client could otherwise fill the log; the counter is what to alert on.
        log.debug("fleet sync: dropped %s", what)

    async def _close(self) -> None:
        if self._sub is not None:
            self._sub.close(linger=0)
        if self._pub is not None:
            self._pub.close(linger=FINAL_LINGER_MS)
        self._sub = self._pub = None
        self._connected.clear()
        if self._context is not None:
            # Waits up to FINAL_LINGER_MS for the last batch to leave: off the event loop.
            await asyncio.to_thread(self._context.term)
            self._context = None


def _endpoint(address: str) -> str:
    """The ZMQ endpoint of a peer address: `ipc://...` as it is, `host:port` over TCP."""
    return address if address.startswith("ipc://") else f"tcp://{address}"
