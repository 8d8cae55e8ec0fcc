"""Drives one engine in real time: the engine's modelled seconds become wall seconds x `time_scale`.

Modelled time is `(clock() - t0) / time_scale`. While the engine has work the driver calls `step(now)`, sleeps
until the absolute wall deadline of the step's end and then hands the step's outputs to the requests' streams.
Back-to-back steps continue the modelled timeline exactly (the next step starts where the last one ended), so
timer jitter does not accumulate; only when the process falls behind by more than `max_lag_s` of wall time does
the timeline jump forward to the clock. An idle engine waits for a new request, or until the moment its next KV
transfer lands.

The clock is `time.monotonic` rather than the loop's clock because uvloop's `loop.time()` has millisecond
resolution, which at `time_scale` 0.1 would be 10 ms of modelled time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from kvroute.simulator.engine.engine import Engine
from kvroute.simulator.engine.kv_events import KVEvent
from kvroute.simulator.engine.request import EngineRequest, FinishReason, RequestOutput

log = logging.getLogger(__name__)


class EngineFailed(RuntimeError):
    """The engine raised; the driver stopped and no request can be served any more."""


class RequestStream:
    """The outputs of one request, in order, each with the modelled time it became visible."""

    def __init__(self, request_id: str, arrival: float) -> None:
        self.request_id = request_id
        self.arrival = arrival
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.finish_reason: FinishReason | None = None
        self._queue: asyncio.Queue[tuple[RequestOutput, float] | BaseException] = asyncio.Queue()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _push(self, output: RequestOutput, at: float) -> None:
        if output.new_tokens and self.first_token_at is None:
            self.first_token_at = at
        if output.finish_reason is not None:
            self.finish_reason = output.finish_reason
            self.finished_at = at
        self._queue.put_nowait((output, at))

    def _fail(self, error: BaseException) -> None:
        self.finish_reason = FinishReason.ABORT
        self._queue.put_nowait(error)

    async def __aiter__(self) -> AsyncIterator[tuple[RequestOutput, float]]:
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item[0].finished:
                return


class RequestObserver(Protocol):
    """Told about request milestones as they happen in modelled time (metrics)."""

    def first_token(self, stream: RequestStream) -> None: ...

    def finished(self, stream: RequestStream) -> None: ...


class EngineDriver:
    def __init__(
        self,
        engine: Engine,
        *,
        time_scale: float = 1.0,
        observer: RequestObserver | None = None,
        on_kv_events: Callable[[list[KVEvent]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_lag_s: float = 0.005,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.engine = engine
        self.time_scale = time_scale
        self._observer = observer
        self.on_kv_events = on_kv_events
        self._clock = clock
        self._max_lag = max_lag_s / time_scale
        self._t0 = clock()
        self._streams: dict[str, RequestStream] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    # ---- request side ------------------------------------------------------------------------------------
    def now(self) -> float:
        """Modelled seconds since the driver was created."""
        return (self._clock() - self._t0) / self.time_scale

    @property
    def num_streams(self) -> int:
        """Requests the driver is tracking (bounded by what is in flight)."""
        return len(self._streams)

    def submit(self, request: EngineRequest) -> RequestStream:
        """Queue a request in the engine; raises ValueError for a request the engine refuses."""
        if self.failure is not None:
            raise EngineFailed("the engine stopped after an internal error")
        request.arrival_time = self.now()
        self.engine.add_request(request)
        stream = RequestStream(request.request_id, request.arrival_time)
        self._streams[request.request_id] = stream
        self._wake.set()
        return stream

    def release(self, stream: RequestStream) -> None:
        """The caller is done with `stream`; a request still in the engine is aborted (client went away)."""
        if self._streams.pop(stream.request_id, None) is None:
            return
        self.engine.abort(stream.request_id)
        stream.finish_reason = FinishReason.ABORT
        stream.finished_at = self.now()
        if self._observer is not None:
            self._observer.finished(stream)

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-driver")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ---- the loop --------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("engine step failed; the driver stops")
            self.failure = exc
            streams, self._streams = self._streams, {}
            for stream in streams.values():
                stream._fail(EngineFailed("the engine stopped after an internal error"))

    async def _loop(self) -> None:
        engine = self.engine
        resume_at: float | None = None
        while True:
            if not engine.has_work():
                self._wake.clear()
                await self._wake.wait()
                resume_at = None
            now = self._start_time(resume_at)
            result = engine.step(now)
            if self.on_kv_events is not None:
                events = engine.drain_kv_events()
                if events:
                    self.on_kv_events(events)
            if result.duration == 0 and not result.outputs:
                resume_at = await self._idle(engine.next_wakeup())
                continue
            resume_at = now + result.duration
            delay = (resume_at - self.now()) * self.time_scale
            if delay > 0:
                await asyncio.sleep(delay)
            self._deliver(result.outputs, resume_at)

    def _start_time(self, resume_at: float | None) -> float:
        now = self.now()
        if resume_at is not None and now - resume_at <= self._max_lag:
            return resume_at
        return now

    async def _idle(self, wakeup: float | None) -> float | None:
        """Wait for a new request or the next KV transfer; returns the transfer time if that came first."""
        self._wake.clear()
        if wakeup is None:
            await self._wake.wait()
            return None
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, (wakeup - self.now()) * self.time_scale))
        except TimeoutError:
            return wakeup
        return None

    def _deliver(self, outputs: list[RequestOutput], at: float) -> None:
        observer = self._observer
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue  # released (aborted) while the step ran
            first = output.new_tokens and stream.first_token_at is None
            stream._push(output, at)
            if output.finished:
                del self._streams[output.request_id]
            if observer is not None:
                if first:
                    observer.first_token(stream)
                if output.finished:
                    observer.finished(stream)
