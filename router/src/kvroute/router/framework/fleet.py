"""The contract of plugins whose state router replicas share ("fleet sync", `kvroute.router.fleet`).

A plugin that keeps state from the requests its router scheduled (a prefix index, an LRU of cold-served
endpoints, in-flight counters) sees only 1/N of the traffic when N replicas serve one pool. With fleet sync each
replica tells the others what it scheduled; a peer hands that to the plugin of the same name, which applies it
as if its own router had scheduled the request:

- on the replica that scheduled the request, after every `PreRequest` hook: `share(state, request, result)`
  returns what a peer needs (built from plain values: None, bool, int, float, str, bytes, lists and dicts of
  them), or None when the request changes nothing a peer keeps;
- on each peer: `adopt(state, shared, endpoints)` with a `CycleState` the peer keeps for that request. The peer
  then passes the same state to the plugin's `ResponseHook` methods as the request progresses
  (`on_response_chunk` with the output tokens reported so far) and when it completes (`on_response_complete`,
  exactly once, also when the replica that scheduled it is gone), so whatever `adopt` charged is released the
  way `pre_request`'s charge is.

`adopt` raises `ValueError` or `TypeError` for data it cannot use (a peer running another version); the sync
layer counts it and goes on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from kvroute.router.framework.cycle_state import CycleState
from kvroute.router.framework.endpoint import Endpoint
from kvroute.router.framework.plugins import Plugin
from kvroute.router.framework.request import LLMRequest
from kvroute.router.framework.results import SchedulingResult


class FleetShared(Plugin, ABC):
    @abstractmethod
    def share(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> Any:
        """What peers need to apply this request as their own, or None."""

    @abstractmethod
    def adopt(self, state: CycleState, shared: Any, endpoints: Mapping[str, Endpoint]) -> None:
        """Apply a peer's `share` result; `endpoints` is this router's pool by endpoint id."""
