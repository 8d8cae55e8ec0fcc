"""Fleet sync: router replicas of one pool share their routing decisions, so each routes as if it saw all traffic.

Each replica records what its own requests do, in order, and hands them to the transport in batches
(`take_batch`); each peer applies a batch (`receive`) to the plugins of its current configuration that
implement `FleetShared`:

- **scheduled** (after every `PreRequest` hook): per sharing plugin, what its `share` returned, under the
  plugin's name; a peer calls `adopt` on its plugin of the same name and type, with a `CycleState` it keeps for
  the request;
- **progress**: the output tokens of the response so far; a peer calls the adopting plugins' `on_response_chunk`
  with the new ones (at most one progress record per request per batch: later ones replace earlier ones);
- **completed**: a peer calls their `on_response_complete`, exactly once, and forgets the request.

A batch is a msgpack array `[1, replica id, incarnation, seq, sent_at, records]`; the incarnation is random per
process, so a replica that restarted is recognised and its predecessor's open requests are completed. Records are
`[0, request id, endpoint id, {plugin name: [plugin type, shared]}]`, `[1, request id, output tokens]` and
`[2, request id]`. A batch goes out at least every `heartbeat` seconds even when empty, so peers can tell a quiet
replica from a dead one: a peer silent for `peer_timeout` seconds (`expire_peers`) has every open request
completed. So does a peer request with no record for `stale_request` seconds, which covers records lost on the
way (a sequence gap is counted: the transport may drop batches when a peer cannot keep up). A batch whose
sequence number was already seen (a peer heard on two paths) is dropped.

Nothing here does I/O or reads the clock: the caller passes `now`. Malformed batches raise `ValueError` and
change nothing; a record that a plugin rejects is counted (`rejected_records`) and skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from kvroute.router.config.builder import LoadedConfig
from kvroute.router.framework import (
    ApiKind,
    CycleState,
    Endpoint,
    FleetShared,
    LLMRequest,
    ResponseHook,
    ResponseInfo,
    SchedulingResult,
)

log = logging.getLogger(__name__)

VERSION = 1
SCHEDULED, PROGRESS, COMPLETED = 0, 1, 2
_NO_HEADERS: Mapping[str, str] = {}


@dataclass(slots=True)
class _PeerRequest:
    plugins: tuple[FleetShared, ...]  # the plugins that adopted it, of the configuration current then
    state: CycleState
    request: LLMRequest
    endpoint: Endpoint
    response: ResponseInfo
    touched: float


@dataclass(slots=True)
class Peer:
    incarnation: str
    seq: int
    last_seen: float
    requests: dict[str, _PeerRequest] = field(default_factory=dict)


@dataclass
class SyncCounters:
    sent_batches: int = 0
    received_batches: int = 0
    applied_records: int = 0
    rejected_records: int = 0
    sequence_gaps: int = 0
    duplicate_batches: int = 0  # a batch received again (same incarnation, a sequence number already seen)
    expired_peers: int = 0
    stale_requests: int = 0


class FleetSync:
    def __init__(
        self,
        replica_id: str,
        config_source: Callable[[], LoadedConfig],
        endpoints: Callable[[], Mapping[str, Endpoint]],
        *,
        peer_timeout: float = 10.0,
        heartbeat: float = 1.0,
        stale_request: float = 600.0,
    ) -> None:
        self.replica_id = replica_id
        self.incarnation = os.urandom(8).hex()
        self.peers: dict[str, Peer] = {}
        self.counters = SyncCounters()
        self._config_source = config_source
        self._endpoints = endpoints
        self._peer_timeout = peer_timeout
        self._heartbeat = heartbeat
        self._stale_request = stale_request
        self._records: list[list[Any]] = []
        self._progress: dict[str, list[Any]] = {}  # request id -> its progress record in `_records`
        self._seq = 0
        self._last_sent = float("-inf")
        self._sharing: tuple[LoadedConfig, tuple[FleetShared, ...]] | None = None
        # Called when a record arrives with none pending: a transport that sends at once schedules its send.
        self.on_pending: Callable[[], None] | None = None

    # The replica's own requests.

    def scheduled(self, config: LoadedConfig, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        """After the PreRequest hooks of a request this replica scheduled."""
        if not result.endpoints:
            return
        shared: dict[str, list[Any]] = {}
        for plugin in self._sharing_plugins(config):
            value = plugin.share(state, request, result)
            if value is not None:
                shared[plugin.name] = [plugin.type_name, value]
        if shared:
            self._record([SCHEDULED, request.request_id, result.endpoints[0].id, shared])

    def progress(self, request_id: str, output_tokens: int) -> None:
        record = self._progress.get(request_id)
        if record is not None:
            record[2] = output_tokens
            return
        record = [PROGRESS, request_id, output_tokens]
        self._progress[request_id] = record
        self._record(record)

    def completed(self, request_id: str) -> None:
        self._record([COMPLETED, request_id])

    def _record(self, record: list[Any]) -> None:
        if not self._records and self.on_pending is not None:
            self.on_pending()
        self._records.append(record)

    def take_batch(self, now: float) -> bytes | None:
        """The records since the last batch, encoded; an empty batch once `heartbeat` seconds passed; else None."""
        if not self._records and now - self._last_sent < self._heartbeat:
            return None
        records, self._records, self._progress = self._records, [], {}
        self._seq += 1
        self._last_sent = now
        self.counters.sent_batches += 1
        data: bytes = msgpack.packb([VERSION, self.replica_id, self.incarnation, self._seq, now, records])
        return data

    # Peers' requests.

    def receive(self, data: bytes, now: float) -> None:
        """Apply a peer's batch. Raises `ValueError` for one that cannot be decoded (nothing is applied then)."""
        replica_id, incarnation, seq, records = _decode(data)
        if replica_id == self.replica_id:
            return
        peer = self.peers.get(replica_id)
        if peer is None or peer.incarnation != incarnation:
            if peer is not None:
                log.info("fleet peer %s restarted: releasing its %d open requests", replica_id, len(peer.requests))
                self._release(peer)
            peer = self.peers[replica_id] = Peer(incarnation, seq - 1, now)
        elif seq <= peer.seq:  # a batch heard twice (a peer reachable on two paths): applied once
            self.counters.duplicate_batches += 1
            return
        if seq != peer.seq + 1:
            self.counters.sequence_gaps += 1
        peer.seq, peer.last_seen = seq, now
        self.counters.received_batches += 1
        for record in records:
            try:
                self._apply(peer, record, now)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                self.counters.rejected_records += 1
                log.debug("fleet record from %s rejected: %r", replica_id, exc)

    def expire_peers(self, now: float) -> list[str]:
        """Forget peers silent for `peer_timeout` seconds (completing their open requests) and complete peer
        requests untouched for `stale_request` seconds; returns the ids of the peers forgotten."""
        gone = [pid for pid, peer in self.peers.items() if now - peer.last_seen > self._peer_timeout]
        for pid in gone:
            log.warning("fleet peer %s silent for %.0fs: releasing its open requests", pid, self._peer_timeout)
            self._release(self.peers.pop(pid))
            self.counters.expired_peers += 1
        for peer in self.peers.values():
            stale = [rid for rid, r in peer.requests.items() if now - r.touched > self._stale_request]
            for request_id in stale:
                _complete(peer.requests.pop(request_id))
                self.counters.stale_requests += 1
        return gone

    @property
    def open_peer_requests(self) -> int:
        return sum(len(peer.requests) for peer in self.peers.values())

    def _apply(self, peer: Peer, record: list[Any], now: float) -> None:
        kind, request_id = record[0], record[1]
        if not isinstance(request_id, str):
            raise TypeError("request id must be a string")
        if kind == SCHEDULED:
            self._adopt(peer, request_id, record[2], record[3], now)
        elif kind == PROGRESS:
            tokens = record[2]
            if not isinstance(tokens, int):
                raise TypeError("output tokens must be an int")
            adopted = peer.requests.get(request_id)
            if adopted is not None:
                new = tokens - adopted.response.output_tokens
                adopted.touched = now
                if new > 0:
                    adopted.response.output_tokens = tokens
                    _chunk(adopted, new)
        elif kind == COMPLETED:
            adopted = peer.requests.pop(request_id, None)
            if adopted is not None:
                _complete(adopted)
        else:
            raise ValueError(f"unknown record kind {kind!r}")
        self.counters.applied_records += 1

    def _adopt(self, peer: Peer, request_id: str, endpoint_id: Any, shared: Any, now: float) -> None:
        if not isinstance(endpoint_id, str) or not isinstance(shared, dict):
            raise TypeError("a scheduled record needs an endpoint id and a map of plugin values")
        if request_id in peer.requests:
            return  # a duplicate: applied once
        config = self._config_source()
        endpoints = self._endpoints()
        state = CycleState()
        adopted: list[FleetShared] = []
        for name, entry in shared.items():
            plugin = config.plugins.get(name)
            if not isinstance(plugin, FleetShared) or not isinstance(entry, list) or len(entry) != 2:
                continue
            type_name, value = entry
            if type_name != plugin.type_name:
                continue  # the peer runs another configuration (a rollout in progress)
            try:
                plugin.adopt(state, value, endpoints)
            except (ValueError, TypeError) as exc:
                self.counters.rejected_records += 1
                log.debug("plugin %s rejected a fleet record: %r", name, exc)
                continue
            adopted.append(plugin)
        if not adopted:
            return
        endpoint = endpoints.get(endpoint_id) or _endpoint(endpoint_id)
        request = LLMRequest(request_id, "", ApiKind.COMPLETIONS, "", {}, _NO_HEADERS)
        peer.requests[request_id] = _PeerRequest(tuple(adopted), state, request, endpoint, ResponseInfo(), now)

    def _sharing_plugins(self, config: LoadedConfig) -> tuple[FleetShared, ...]:
        cached = self._sharing
        if cached is None or cached[0] is not config:
            plugins = tuple(p for p in config.plugins.values() if isinstance(p, FleetShared))
            cached = self._sharing = (config, plugins)
        return cached[1]

    def _release(self, peer: Peer) -> None:
        requests, peer.requests = peer.requests, {}
        for adopted in requests.values():
            _complete(adopted)


def _decode(data: bytes) -> tuple[str, str, int, list[Any]]:
    try:
        batch = msgpack.unpackb(data, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"not a fleet batch: {exc}") from None
    if not isinstance(batch, list) or len(batch) != 6 or batch[0] != VERSION:
        raise ValueError("not a fleet batch of version 1")
    _, replica_id, incarnation, seq, _sent_at, records = batch
    if not isinstance(replica_id, str) or not isinstance(incarnation, str) or not isinstance(seq, int):
        raise ValueError("a fleet batch needs a replica id, an incarnation and a sequence number")
    if not isinstance(records, list) or not all(isinstance(r, list) and len(r) >= 2 for r in records):
        raise ValueError("fleet records must be arrays")
    return replica_id, incarnation, seq, records


def _endpoint(endpoint_id: str) -> Endpoint:
    """An endpoint this replica does not know (yet): only its id matters to the hooks."""
    address, _, port = endpoint_id.rpartition(":")
    return Endpoint.create(address or endpoint_id, int(port) if port.isdigit() else 0)


def _chunk(adopted: _PeerRequest, new_tokens: int) -> None:
    for plugin in adopted.plugins:
        if isinstance(plugin, ResponseHook):
            try:
                plugin.on_response_chunk(adopted.state, adopted.request, adopted.endpoint, adopted.response, new_tokens)
            except Exception:
                log.exception("plugin %s failed on a peer's progress", plugin.name)


def _complete(adopted: _PeerRequest) -> None:
    for plugin in adopted.plugins:
        if isinstance(plugin, ResponseHook):
            try:
                plugin.on_response_complete(adopted.state, adopted.request, adopted.endpoint, adopted.response)
            except Exception:
                log.exception("plugin %s failed to complete a peer's request", plugin.name)
