"""The time source of plugins that measure durations (observed TTFT, time between tokens).

A plugin that reads the time sets `uses_clock = True` and takes a keyword argument `clock`: a callable returning
seconds on a monotonic scale. The router passes `time.monotonic`; the discrete-event benchmark passes its virtual
clock, so what such a plugin learns from observed latencies is the same in simulated and in real time.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
