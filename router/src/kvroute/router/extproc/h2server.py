"""A gRPC server on the h2 HTTP/2 stack and asyncio, for the ext_proc door and its health service.

It costs about half of grpc.aio's CPU per ext_proc stream (docs/extproc.md, "gRPC servers compared"): a message
is handled in `data_received`, where it arrives, with no task, queue or thread hop per stream, and the answers to
a batch of received frames leave in one write. What it speaks of gRPC's HTTP/2 protocol:

- a call is a POST stream to `/<service>/<method>` (`methods`); an unknown path is answered `UNIMPLEMENTED`;
- messages are length-prefixed, uncompressed (a compressed one is `UNIMPLEMENTED`), at most
  `max_message_bytes` (larger: `RESOURCE_EXHAUSTED`), split over DATA frames as flow control allows;
- the status comes in trailers (`grpc-status`, `grpc-message`), or alone when nothing was answered;
- HTTP/2 flow control both ways (a stream whose window is full waits for the peer's WINDOW_UPDATE); 1 MiB
  stream windows so a large body needs no round trip per 64 KiB.

A `calls.Call` serves one stream, made by its method's factory when the stream opens. Its answers go out as soon
as it returns them; an awaitable from `pending` (e.g. the request's preparation) holds back the messages that
follow until it is done. `close` runs exactly once per call, whatever ends the stream: the end of the call, a
reset by the peer, the connection lost, the server stopping. A call that raises `GrpcError` ends with its
status; any other exception is logged and ends the call `UNKNOWN`, and the connection serves on.

`stop(grace)` stops listening, sends each connection a GOAWAY naming the last stream it accepts (a newer one
is refused), waits up to `grace` seconds for the streams in flight, then closes the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from urllib.parse import quote

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes

from kvroute.router.extproc.calls import OK, RESOURCE_EXHAUSTED, UNIMPLEMENTED, UNKNOWN, Call, GrpcError

log = logging.getLogger(__name__)

WINDOW_BYTES = 1 << 20
_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_MESSAGE_SAFE = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"  # printable ASCII but "%": grpc-message's percent-encoding
_CONFIG = H2Configuration(
    client_side=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)
_SETTINGS: dict[SettingCodes | int, int] = {
    SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1,  # as grpc's own servers: the gateway sets the limit
    SettingCodes.INITIAL_WINDOW_SIZE: WINDOW_BYTES,
    SettingCodes.MAX_FRAME_SIZE: 1 << 20,  # a peer that sends larger frames sends fewer of them
}


class _Unimplemented(Call):
    def received(self, message: bytes) -> Sequence[bytes]:
        return ()


def _goaway(last_stream_id: int) -> bytes:
    """A GOAWAY frame (NO_ERROR), sent outside h2's state machine, which after one refuses to send anything more
    and so would cut the streams a graceful stop lets finish."""
    return struct.pack(">I", 8)[1:] + struct.pack(">BBIII", 0x7, 0, 0, last_stream_id, 0)


class _Stream:
    __slots__ = (
        "call",
        "headers_sent",
        "held",
        "id",
        "inbox",
        "needed",
        "outbox",
        "peer_done",
        "queue",
        "task",
        "trailers",
    )

    def __init__(self, stream_id: int, call: Call) -> None:
        self.id = stream_id
        self.call = call
        self.inbox: list[bytes] = []  # the frames of a message not yet whole: `held` of `needed` bytes
        self.held = self.needed = 0
        self.outbox = b""  # framed answers waiting for the flow-control window
        self.headers_sent = False
        self.peer_done = False
        self.task: asyncio.Task[None] | None = None
        self.queue: list[bytes] = []  # messages received while `task` runs
        self.trailers: tuple[int, str] | None = None  # the status, once decided, sent after the outbox


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.h2 = H2Connection(_CONFIG)
        self.streams: dict[int, _Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.last_stream: int | None = None  # once draining: the newest stream accepted
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass asyncio's
        self.server.connections.add(self)
        self.h2.initiate_connection()
        self.h2.update_settings(_SETTINGS)
        self.h2.increment_flow_control_window(WINDOW_BYTES)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            self._close(stream)
        if not self.lost.done():
            self.lost.set_result(None)
        self.server.idle_changed()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
            if self.h2.state_machine.state is ConnectionState.CLOSED:
                self._peer_goaway(events)
            for event in events:
                if isinstance(event, DataReceived):
                    self._data(event)
                elif isinstance(event, RequestReceived):
                    self._request(event)
                elif isinstance(event, StreamEnded):
                    self._peer_done(event.stream_id)
                elif isinstance(event, WindowUpdated):
                    self._window(event.stream_id)
                elif isinstance(event, RemoteSettingsChanged):  # a larger initial window opens every stream's
                    self._window(0)
                elif isinstance(event, StreamReset):
                    stream = self.streams.pop(event.stream_id, None)
                    if stream is not None:
                        self._close(stream)
        except ProtocolError:  # the peer broke HTTP/2, or tore the connection down
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        self._flush()

    def _peer_goaway(self, events: list[Event]) -> None:
        """The peer sent GOAWAY: it opens no more streams. h2 then refuses to send anything at all, while HTTP/2
        lets the streams in flight finish (Envoy drains a connection so); after a graceful GOAWAY h2's connection
        state is put back to open for them, and the peer closes the connection once they are done."""
        goaway = next((event for event in events if isinstance(event, ConnectionTerminated)), None)
        if goaway is not None and goaway.error_code == ErrorCodes.NO_ERROR:
            self.h2.state_machine.state = ConnectionState.SERVER_OPEN

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        if self.last_stream is not None and stream_id > self.last_stream:
            with contextlib.suppress(StreamClosedError):
                self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        path = next((value for name, value in event.headers if name == b":path"), b"")
        method = self.server.methods.get(path.decode("latin-1"))
        if method is None:
            stream = _Stream(stream_id, _Unimplemented())
            self.streams[stream_id] = stream
            self._end(stream, UNIMPLEMENTED, f"unknown method {path[:200].decode('latin-1')}")
            return
        self.streams[stream_id] = _Stream(stream_id, method())

    def _data(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        if event.flow_controlled_length:  # not the empty frame that often carries only the end of the stream
            self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        stream = self.streams.get(stream_id)
        if stream is None or stream.trailers is not None:
            return
        data = event.data
        if stream.inbox:  # the rest of a message split over frames: joined once whole
            stream.inbox.append(data)
            stream.held += len(data)
            if stream.held < stream.needed:
                return
            data = b"".join(stream.inbox)
            stream.inbox = []
        start, size = 0, len(data)
        while size - start >= 5:
            flags, length = data[start], int.from_bytes(data[start + 1 : start + 5], "big")
            if length > self.server.max_message_bytes:
                limit = self.server.max_message_bytes
                self._end(stream, RESOURCE_EXHAUSTED, f"message of {length} bytes over the limit of {limit}")
                return
            if flags & 1:
                self._end(stream, UNIMPLEMENTED, "compressed messages are not supported")
                return
            end = start + 5 + length
            if end > size:
                break
            self._deliver(stream, data[start + 5 : end])
            if stream.trailers is not None:
                return
            start = end
        if start < size:
            rest = data[start:]
            stream.inbox = [rest]
            stream.held = len(rest)
            stream.needed = 5 + int.from_bytes(rest[1:5], "big") if len(rest) >= 5 else 5

    def _deliver(self, stream: _Stream, message: bytes) -> None:
        if stream.task is not None:
            stream.queue.append(message)
            return
        try:
            answers = stream.call.received(message)
            waiting = stream.call.pending()
        except Exception as error:  # a failing call ends its stream, not the connection
            self._failed(stream, error)
            return
        self._answer(stream, answers)
        if waiting is not None:
            stream.task = asyncio.get_running_loop().create_task(self._wait(stream, waiting))

    async def _wait(self, stream: _Stream, waiting: Awaitable[Sequence[bytes]]) -> None:
        try:
            answers: Sequence[bytes] | Exception = await waiting
        except Exception as error:
            answers = error
        stream.task = None
        if self.streams.get(stream.id) is not stream:
            return
        try:
            if isinstance(answers, Exception):
                self._failed(stream, answers)
            else:
                self._answer(stream, answers)
                self._replay(stream)
        except ProtocolError:  # the connection is being torn down
            if self.transport is not None:
                self.transport.close()
        self._flush()

    def _replay(self, stream: _Stream) -> None:
        """Delivers the messages held back while the call was pending, until it is pending again."""
        queue, stream.queue = stream.queue, []
        for index, message in enumerate(queue):
            self._deliver(stream, message)
            if stream.task is not None or stream.trailers is not None:
                stream.queue[:0] = queue[index + 1 :]
                return
        if stream.peer_done:
            self._peer_done(stream.id)

    def _peer_done(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.peer_done = True
        if stream.task is not None or stream.trailers is not None:
            return
        try:
            answers = stream.call.ended()
        except Exception as error:
            self._failed(stream, error)
            return
        self._answer(stream, answers)
        self._end(stream, OK, "")

    def _failed(self, stream: _Stream, error: Exception) -> None:
        if isinstance(error, GrpcError):
            self._end(stream, error.code, error.message)
            return
        log.error("gRPC stream failed", exc_info=error)
        self._end(stream, UNKNOWN, f"unexpected {error.__class__.__name__}: {error}")

    def _answer(self, stream: _Stream, answers: Sequence[bytes]) -> None:
        if not answers or self.streams.get(stream.id) is not stream:
            return
        framed = b"".join(b"".join((b"\x00", len(a).to_bytes(4, "big"), a)) for a in answers)
        stream.outbox = stream.outbox + framed if stream.outbox else framed
        self._send(stream)

    def _send(self, stream: _Stream) -> None:
        """Sends what the window allows of the outbox, then the trailers once it is empty and they are due."""
        h2 = self.h2
        try:
            if not stream.headers_sent:
                stream.headers_sent = True
                h2.send_headers(stream.id, _HEADERS)
            outbox, sent = stream.outbox, 0
            while sent < len(outbox):
                room = min(h2.local_flow_control_window(stream.id), h2.max_outbound_frame_size)
                if room <= 0:
                    break
                if sent == 0 and room >= len(outbox):
                    h2.send_data(stream.id, outbox)
                    sent = len(outbox)
                else:
                    h2.send_data(stream.id, outbox[sent : sent + room])
                    sent += room
        except StreamClosedError:  # the peer reset it in the frames being handled: its event follows
            self._drop(stream)
            return
        stream.outbox = outbox = outbox[sent:] if sent < len(outbox) else b""
        if not outbox and stream.trailers is not None:
            self._send_trailers(stream)

    def _end(self, stream: _Stream, code: int, message: str) -> None:
        stream.trailers = (code, message)
        if stream.task is not None:
            stream.task.cancel()
            stream.task = None
        if stream.headers_sent:
            self._send(stream)
        else:
            self._send_trailers(stream)

    def _send_trailers(self, stream: _Stream) -> None:
        assert stream.trailers is not None
        code, message = stream.trailers
        status = [(b"grpc-status", str(code).encode())]
        if message:
            status.append((b"grpc-message", quote(message, safe=_MESSAGE_SAFE).encode()))
        try:
            self.h2.send_headers(stream.id, status if stream.headers_sent else _HEADERS + status, end_stream=True)
            state = self.h2.streams.get(stream.id)
            if state is not None and not state.closed:  # the answer is complete: stop the peer sending
                self.h2.reset_stream(stream.id, ErrorCodes.NO_ERROR)
        except StreamClosedError:
            pass
        self._drop(stream)

    def _drop(self, stream: _Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
            self._close(stream)

    def _window(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None and stream.outbox:
                self._send(stream)
            return
        for stream in list(self.streams.values()):
            if stream.outbox:
                self._send(stream)

    def _close(self, stream: _Stream) -> None:
        if stream.task is not None:
            stream.task.cancel()
            stream.task = None
        try:
            stream.call.close()
        except Exception:
            log.exception("closing a gRPC call failed")
        if not self.streams:
            self.server.idle_changed()

    def drain(self) -> None:
        self.last_stream = self.h2.highest_inbound_stream_id
        self._flush()
        if self.transport is not None:
            self.transport.write(_goaway(self.last_stream))
            if not self.streams:
                self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class GrpcServer:
    """`methods` maps `/<service>/<method>` to the factory of its calls."""

    def __init__(self, methods: Mapping[str, Callable[[], Call]], max_message_bytes: int = 4 * 1024 * 1024) -> None:
        self.methods = dict(methods)
        self.max_message_bytes = max_message_bytes
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._idle = asyncio.Event()

    async def start(
        self, host: str, port: int, context: ssl.SSLContext | None = None, *, reuse_port: bool = False
    ) -> int:
        """Listens (TLS with `context`, which must offer ALPN `h2`); the port bound. A port in use is an error
        unless `reuse_port` (SO_REUSEPORT: processes sharing the port on purpose)."""
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Connection(self), host, port, ssl=context, reuse_port=reuse_port, backlog=1024
            )
        except OSError as error:
            raise RuntimeError(f"Failed to bind to address {host}:{port}: {error.strerror}") from None
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def idle_changed(self) -> None:
        if not any(connection.streams for connection in self.connections):
            self._idle.set()

    async def stop(self, grace: float) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._idle.clear()
        for connection in list(self.connections):
            connection.drain()
        self.idle_changed()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        connections = list(self.connections)
        for connection in connections:
            connection.abort()
        if connections:
            await asyncio.wait([connection.lost for connection in connections], timeout=5)
