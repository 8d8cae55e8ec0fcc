"""The gRPC method `envoy.service.ext_proc.v3.ExternalProcessor/Process`: one bidirectional stream per HTTP
request, each driven by an `Exchange`. When the configuration prepares requests (`Director.start` gives an
awaitable), the exchange leaves the request pending and the server holds the next messages back until it is
routed.

Answers leave as bytes: the constant ones and relayed body chunks are already serialised (`wire`), the others
are serialised here. Whatever ends the stream (Envoy closing it, Envoy resetting it because the client went away,
the server being stopped, or a bug) the server closes the call, which closes the exchange, so the request's
`on_response_complete` runs exactly once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from kvroute.router.extproc import protocol, wire
from kvroute.router.extproc.calls import Call
from kvroute.router.extproc.exchange import Exchange
from kvroute.router.extproc.processor import Processor

PROCESS = f"/{protocol.SERVICE_NAME}/Process"


def _serialized(answers: Sequence[wire.Answer]) -> Sequence[bytes]:
    return [wire.serialize(answer) for answer in answers] if answers else ()


class ExtProcCall(Call):
    __slots__ = ("_exchange",)

    def __init__(self, processor: Processor) -> None:
        self._exchange = Exchange(processor)

    def received(self, message: bytes) -> Sequence[bytes]:
        return _serialized(self._exchange.handle_message(protocol.ProcessingRequest.FromString(message)))

    def pending(self) -> Awaitable[Sequence[bytes]] | None:
        return self._routed() if self._exchange.preparing else None

    async def _routed(self) -> Sequence[bytes]:
        return _serialized(await self._exchange.route_prepared())

    def close(self) -> None:
        self._exchange.close()


class ExtProcService:
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def methods(self) -> dict[str, Callable[[], Call]]:
        return {PROCESS: lambda: ExtProcCall(self.processor)}
