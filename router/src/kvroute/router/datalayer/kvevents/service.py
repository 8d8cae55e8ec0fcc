"""The KV events subscriptions of the configuration in force: one subscriber per distinct subscription.

`apply(consumers)` makes the running subscribers those of `consumers` (every `KVEventsConsumer` plugin of the
configuration): a subscription still wanted keeps its subscriber, socket and sequence state, and only its list
of consumers changes, so a reload that carries a consumer over (same name, type and parameters: the same
instance) changes nothing for it; a subscription no longer wanted is closed before a new one is opened (which
may bind the same address again, see `subscriber`). Consumers with equal
subscriptions share one subscriber. The index gauge of a consumer that left is dropped. Calls are serialised, so
reloads in quick succession apply in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import zmq.asyncio

from kvroute.router.datalayer.kvevents.subscriber import KVEventsSubscriber
from kvroute.router.datalayer.pool import EndpointPool
from kvroute.router.framework import KVEventsConsumer, KVEventsSubscription
from kvroute.router.observability import RouterMetrics

log = logging.getLogger(__name__)


class KVEventsService:
    def __init__(
        self, pool: EndpointPool, metrics: RouterMetrics | None = None, *, context: zmq.asyncio.Context | None = None
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._context = context
        self._subscribers: dict[KVEventsSubscription, KVEventsSubscriber] = {}
        self._lock = asyncio.Lock()

    @property
    def subscribers(self) -> tuple[KVEventsSubscriber, ...]:
        return tuple(self._subscribers.values())

    async def apply(self, consumers: Sequence[KVEventsConsumer]) -> None:
        """Subscribes for exactly `consumers`; raises `zmq.ZMQError` when a new address cannot be bound (the
        subscriptions that could be opened stay open)."""
        async with self._lock:
            await self._apply(consumers)

    async def _apply(self, consumers: Sequence[KVEventsConsumer]) -> None:
        wanted: dict[KVEventsSubscription, list[KVEventsConsumer]] = {}
        for consumer in consumers:
            wanted.setdefault(consumer.kv_events_subscription(), []).append(consumer)
        kept = {consumer.name for consumer in consumers}
        for subscription, subscriber in list(self._subscribers.items()):
            gone = [c.name for c in subscriber.consumers if c.name not in kept]
            if subscription not in wanted:
                del self._subscribers[subscription]
                await subscriber.stop()
            if self._metrics is not None:
                for name in gone:
                    self._metrics.forget_kv_index(name)
        for subscription, members in wanted.items():
            running = self._subscribers.get(subscription)
            if running is not None:
                running.consumers = tuple(members)
                continue
            subscriber = KVEventsSubscriber(subscription, self._pool, members, self._metrics, context=self._context)
            await subscriber.start()
            self._subscribers[subscription] = subscriber
            log.info(
                "receiving KV events for %s %s",
                ", ".join(repr(c.name) for c in members),
                f"on {subscription.bind}"
                if subscription.bind is not None
                else f"from port {subscription.endpoint_port} of every endpoint",
            )

    async def stop(self) -> None:
        async with self._lock:
            subscribers = list(self._subscribers.values())
            self._subscribers.clear()
            for subscriber in subscribers:
                await subscriber.stop()
