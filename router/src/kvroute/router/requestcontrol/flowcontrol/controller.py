"""`FlowController`: holds requests in the `FlowQueue` while the pool is saturated and releases them as room frees.

`wait(priority, flow, size)` returns when the request may be scheduled. A request is released at once when nothing
is queued ahead of it and the saturation detector reports `saturation(candidates)` below its band's ceiling (1.0,
or what the configuration's usage-limit policy gives: `flowcontrol.limits`); otherwise it is queued. A dispatch
pass releases the next request of the highest band whose ceiling is above the saturation.
The caller must call `settled()` once the released request has been scheduled (or failed to be): until then the
controller releases nothing more, so a detector that counts the router's own in-flight requests
(`concurrency-detector`) sees each released request before deciding on the next one.

Dispatch is event-driven: `wake()` runs a dispatch pass on the next loop iteration, and is called when a request
arrives, when one is settled, when one completes (the Director forwards the `Ledger`'s completion events) and when
the pool changes. A detector reading scraped metrics changes its mind without an event, so while requests wait a
fallback pass runs every `recheck` seconds (default 20 ms, below the 50 ms scrape interval).

Outcomes: released; `FlowRejected(429, "capacity")` over a limit (the answer carries `Retry-After`);
`FlowRejected(503, "ttl_expired")` after `defaultRequestTTL` in the queue (GIE answers 503 there too); a client
that goes away (the awaiting task is cancelled) takes its request out of the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from kvroute.router.config.models import FlowControlSpec
from kvroute.router.framework import Endpoint, SaturationDetector
from kvroute.router.requestcontrol.flowcontrol.limits import BandGate, BandLimits
from kvroute.router.requestcontrol.flowcontrol.metrics import FlowControlMetrics
from kvroute.router.requestcontrol.flowcontrol.queue import CapacityExceeded, FlowQueue, QueueItem

DEFAULT_RECHECK = 0.02
RETRY_AFTER_SECONDS = 1


class FlowRejected(Exception):
    """The request leaves the queue without being served: `status` and `reason` (capacity, ttl_expired)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class FlowController:
    def __init__(
        self,
        spec: FlowControlSpec,
        detector: Callable[[], SaturationDetector],
        candidates: Callable[[], Sequence[Endpoint]],
        metrics: FlowControlMetrics | None = None,
        *,
        recheck: float = DEFAULT_RECHECK,
        limits: Callable[[], BandLimits] = BandLimits,
    ) -> None:
        self.queue: FlowQueue[asyncio.Future[None]] = FlowQueue(spec)
        self._detector = detector
        self._candidates = candidates
        self._metrics = metrics
        self._recheck = recheck
        self._limits = limits
        self._in_transit = 0
        self._pass: asyncio.Handle | None = None
        self._fallback: asyncio.TimerHandle | None = None

    @property
    def spec(self) -> FlowControlSpec:
        return self.queue.spec

    def configure(self, spec: FlowControlSpec) -> None:
        if spec != self.queue.spec:
            self.queue.configure(spec)
            self.wake()

    async def wait(self, priority: int, flow: str, size: int) -> None:
        """Returns when the request may be scheduled (then call `settled()`); raises `FlowRejected`, or
        `CancelledError` when the caller is cancelled (the request leaves the queue)."""
        metrics = self._metrics
        if not self.queue and not self._in_transit and self._gate(priority).admits(priority):
            self._in_transit += 1
            if metrics is not None:
                metrics.observe_wait(priority, flow, 0.0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            item = self.queue.push(priority, flow, size, future)
        except CapacityExceeded as exc:
            if metrics is not None:
                metrics.reject(priority, "capacity")
            raise FlowRejected(429, "capacity", f"the request queue is full ({exc.limit})") from None
        queued_at = time.perf_counter()
        self._changed(item, 1)
        self.wake()
        try:
            async with asyncio.timeout(self.spec.default_request_ttl):
                await future
        except TimeoutError:
            if not future.done() or future.cancelled():
                self._leave(item, "ttl_expired")
                raise FlowRejected(503, "ttl_expired", "the request waited too long in the queue") from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.settled()  # released, then cancelled before it could run: hand its turn on
            else:
                self._leave(item, "disconnected")
            raise
        if metrics is not None:
            metrics.observe_wait(priority, flow, time.perf_counter() - queued_at)

    def settled(self) -> None:
        """The released request has been scheduled, or has failed to be; the next may go."""
        self._in_transit -= 1
        self.wake()

    def wake(self) -> None:
        """Run a dispatch pass soon (once, however often this is called before it runs)."""
        if self._pass is None and self.queue:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._pass = loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._pass = None
        if self._fallback is not None:
            self._fallback.cancel()
            self._fallback = None
        queue = self.queue
        while queue and not self._in_transit:
            item = queue.pop(self._gate().admits)
            if item is None:
                break
            self._changed(item, -1)
            if item.payload.done():
                continue  # its waiter was cancelled (TTL, client gone) and has yet to run: it accounts for itself
            self._in_transit += 1
            item.payload.set_result(None)
        if queue:
            self._fallback = asyncio.get_running_loop().call_later(self._recheck, self.wake)

    def _gate(self, arriving: int | None = None) -> BandGate:
        saturation = self._detector().saturation(self._candidates())
        return self._limits().gate(saturation, self.queue.priorities, arriving)

    def _leave(self, item: QueueItem[asyncio.Future[None]], reason: str) -> None:
        """The waiter of `item` gives up (once): out of the queue, unless a dispatch pass already took it out."""
        if self.queue.remove(item):
            self._changed(item, -1)
        if self._metrics is not None:
            self._metrics.reject(item.priority, reason)

    def _changed(self, item: QueueItem[asyncio.Future[None]], change: int) -> None:
        if self._metrics is not None:
            self._metrics.queued(item.priority, item.flow, change, self.queue.band_size(item.priority)[1])
