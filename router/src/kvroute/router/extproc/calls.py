"""What a gRPC method of the ext_proc door's server (`h2server`) is: a factory of `Call`s, one per stream.

A call takes each message as it arrives (`received`) and returns its answers, serialised; the server frames and
sends them at once. `pending` lets a call finish answering asynchronously (the next messages wait), `ended` gives
the last answers when the peer has sent everything, and `close` runs once when the stream is over however it
ended. Raising `GrpcError` ends the call with that status.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence

# gRPC status codes (grpc/doc/statuscodes.md) the server and its methods use.
OK, UNKNOWN, NOT_FOUND, RESOURCE_EXHAUSTED, UNIMPLEMENTED = 0, 2, 5, 8, 12


class GrpcError(Exception):
    """Ends the call with this status (not OK) and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Call(ABC):
    """One stream of a method: its messages in, its answers (serialised messages) out."""

    __slots__ = ()

    @abstractmethod
    def received(self, message: bytes) -> Sequence[bytes]:
        """The answers to one message, sent at once."""

    def pending(self) -> Awaitable[Sequence[bytes]] | None:
        """After `received`: answers still to come; the next messages wait for them."""
        return None

    def ended(self) -> Sequence[bytes]:
        """The peer sent its last message: the last answers; the call then ends with OK."""
        return ()

    def close(self) -> None:  # noqa: B027  # optional: most calls hold nothing to release
        """The stream is over, however it ended."""


class UnaryCall(Call):
    """A unary method: `answer` maps the one request to the one response."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self._answer = answer
        self._request = b""

    def received(self, message: bytes) -> Sequence[bytes]:
        self._request = message
        return ()

    def ended(self) -> Sequence[bytes]:
        return (self._answer(self._request),)
