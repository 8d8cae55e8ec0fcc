"""The gRPC method `envoy.service.ext_proc.v3.ExternalProcessor/Process`: one bidirectional stream per HTTP
request, each driven by an `Exchange`. When the configuration prepares requests (`Director.start` gives an
awaitable), the exchange leaves the request pending and the service awaits its routing before reading the next
message.

The method is registered with a generic handler instead of the generated servicer so that its response
serializer can take answers already serialised (`wire.serialize`). Whatever ends the stream (Envoy closing it,
Envoy resetting it because the client went away, the server being stopped, or a bug) the `finally` closes the
exchange, so the request's `on_response_complete` runs exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from kvroute.router.extproc import protocol, wire
from kvroute.router.extproc.exchange import Exchange
from kvroute.router.extproc.processor import Processor

log = logging.getLogger(__name__)


class ExtProcService:
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    async def process(
        self, messages: AsyncIterator[protocol.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[wire.Answer]:
        exchange = Exchange(self.processor)
        try:
            async for message in messages:
                for answer in exchange.handle_message(message):
                    yield answer
                if exchange.preparing:
                    for answer in await exchange.route_prepared():
                        yield answer
        except Exception:
            log.exception("ext_proc stream failed")
            raise
        finally:
            exchange.close()

    def add_to(self, server: grpc.aio.Server) -> None:
        method = grpc.stream_stream_rpc_method_handler(
            self.process,
            request_deserializer=protocol.ProcessingRequest.FromString,
            response_serializer=wire.serialize,
        )
        handlers = {"Process": method}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(protocol.SERVICE_NAME, handlers),))
        # Registered methods take the C core's fast path (no per-call lookup by name).
        server.add_registered_method_handlers(protocol.SERVICE_NAME, handlers)
