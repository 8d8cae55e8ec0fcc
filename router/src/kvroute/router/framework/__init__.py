"""Contracts of the scheduling framework: small types and the extension-point ABCs, nothing else.

Runners (`scheduling`, `requestcontrol`, `datalayer`) depend on these; plugins implement them.
"""

from kvroute.router.framework.clock import Clock
from kvroute.router.framework.cycle_state import CycleState, StateKey
from kvroute.router.framework.endpoint import Endpoint, EndpointMetrics, LoraInfo, Role
from kvroute.router.framework.fleet import FleetShared
from kvroute.router.framework.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEvent,
    KVEventsConsumer,
    KVEventsSubscription,
)
from kvroute.router.framework.plugins import (
    DataProducer,
    EndpointObserver,
    Filter,
    NoEndpointsError,
    Picker,
    Plugin,
    PreparationFailed,
    Preparer,
    PreRequest,
    ProfileHandler,
    ResponseHook,
    SaturationDetector,
    Scorer,
    UsageLimitPolicy,
)
from kvroute.router.framework.request import ApiKind, LLMRequest, ResponseInfo
from kvroute.router.framework.results import (
    DisaggregationMode,
    DisaggregationPlan,
    ProfileResult,
    SchedulingProfile,
    SchedulingResult,
    ScoredEndpoint,
)

__all__ = [
    "AllBlocksCleared",
    "ApiKind",
    "BlockRemoved",
    "BlockStored",
    "Clock",
    "CycleState",
    "DataProducer",
    "DisaggregationMode",
    "DisaggregationPlan",
    "Endpoint",
    "EndpointMetrics",
    "EndpointObserver",
    "Filter",
    "FleetShared",
    "KVEvent",
    "KVEventsConsumer",
    "KVEventsSubscription",
    "LLMRequest",
    "LoraInfo",
    "NoEndpointsError",
    "Picker",
    "Plugin",
    "PreRequest",
    "PreparationFailed",
    "Preparer",
    "ProfileHandler",
    "ProfileResult",
    "ResponseHook",
    "ResponseInfo",
    "Role",
    "SaturationDetector",
    "SchedulingProfile",
    "SchedulingResult",
    "ScoredEndpoint",
    "Scorer",
    "StateKey",
    "UsageLimitPolicy",
]
